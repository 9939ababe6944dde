"""Face landmarks for evaluation and training supervision (never needed to decode).

A thin wrapper around the mediapipe 0.10.14 face mesh ("solutions" API), plus a few
measures on landmark arrays that tell whether a decoded video moves like the original:

* ``FaceLandmarker``: a context manager around ``FaceMesh`` in video (tracking) mode, up to
  ``MAX_FACES`` faces, ``refine_landmarks=True`` (so 478 points: 468 mesh points + 2 x 5 iris
  points). ``detect(frame)`` gives the main face's ``(478, 2)`` float32 array of pixel
  coordinates, or ``None``: the largest face found, or with ``near=`` (the original frame's
  landmarks, for a decoded frame) the face nearest to those (``pick_face``). With one face
  allowed, mediapipe returns whichever it found first: on a clip with bystanders
  (vox1_id10287_RfDogGJ-UnM_000900) that was a small face behind the speaker in 54 of 106
  original frames, so a decoded frame that showed the speaker scored 60-80 px.
* ``lip_gap(lm)``, ``eye_opening(lm)``: mouth and eyelid openings, normalised by the
  inter-ocular distance so that they do not depend on face size.
* ``landmark_error(a, b)``: mean point-to-point distance in pixels.
* ``detect_video(frames, near=None)``: the main face in every frame of a video.
* ``motion_fidelity(originals, decoded)``: the above over two frame sequences;
  ``fidelity_from_landmarks`` does the same on landmarks already detected (for example
  from the landmark cache).

Coordinates are continuous pixel coordinates ``(x, y)``: mediapipe's normalised
coordinates times the width and height, so 0 is the left/top edge of the image and the
centre of pixel ``i`` is at ``i + 0.5``. Points may fall slightly outside the image when
the face does.

mediapipe is imported only when a ``FaceLandmarker`` is made: it is an optional
dependency (``pip install 'kpcodec[eval]'``), and importing it is slow.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from kpcodec.errors import KpcodecError, UsageError

N_LANDMARKS = 478
# Faces the mesh looks for in a frame; detect() keeps one (pick_face). Finding up to four costs
# ~7.5 CPU-ms a 512-px frame against ~4.5 for one.
MAX_FACES = 4

MEDIAPIPE_MISSING = "face landmarks need mediapipe==0.10.14: pip install 'kpcodec[eval]'"

# Landmark indices in the mediapipe face-mesh topology. "Left"/"right" are the subject's.
# Inner-lip pairs (upper, lower): the centre and one pair either side of it.
LIP_PAIRS: tuple[tuple[int, int], ...] = ((13, 14), (82, 87), (312, 317))
# Eyelid pairs (upper, lower) at the middle of each eye.
EYE_PAIRS: tuple[tuple[int, int], ...] = ((159, 145), (386, 374))
# Outer eye corners. Used for normalisation rather than the iris centres (468, 473)
# because corners exist without refine_landmarks and do not move with gaze.
EYE_CORNERS: tuple[int, int] = (33, 263)
# Whole contours, for weighting the mouth and eyes in training losses.
LIP_CONTOUR: tuple[int, ...] = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185,  # outer
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)  # inner
EYE_CONTOUR: tuple[int, ...] = (
    33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246,  # right eye
    263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)  # left eye


def face_mesh_module() -> Any:
    """Import mediapipe's face mesh, or raise UsageError (exit 2) saying how to install it."""
    try:
        import mediapipe as mp

        # mediapipe 0.10.14 calls a protobuf API that newer protobuf warns about on
        # first use; the warning is noise for our users.
        warnings.filterwarnings(
            "ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning
        )

        # Newer mediapipe releases drop the "solutions" API: treat that like a missing package.
        return mp.solutions.face_mesh
    except (ImportError, AttributeError) as exc:
        raise UsageError(MEDIAPIPE_MISSING) from exc


class FaceLandmarker:
    """mediapipe face mesh in video mode: one face, refined landmarks (478 points).

    Video mode tracks the face from frame to frame, so use one landmarker per video and
    feed its frames in order; a new video needs a new landmarker (or its tracking state
    would carry over). Use as a context manager, or call ``close()``.
    """

    def __init__(
        self, *, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5,
        max_faces: int = MAX_FACES,
    ) -> None:
        face_mesh = face_mesh_module()
        self._mesh = face_mesh.FaceMesh(
            static_image_mode=False,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )

    def detect(self, frame: np.ndarray, near: np.ndarray | None = None) -> np.ndarray | None:
        """Landmarks of the main face in an RGB uint8 ``(H, W, 3)`` frame (``pick_face``: the
        largest, or the nearest to ``near``).

        Returns a ``(478, 2)`` float32 array of ``(x, y)`` pixel coordinates, or ``None``
        when no face is found.
        """
        if self._mesh is None:
            raise RuntimeError("FaceLandmarker is closed")
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(
                f"expected an RGB uint8 (H, W, 3) frame, got {frame.dtype} {frame.shape}"
            )
        height, width = frame.shape[:2]
        # mediapipe needs a C-contiguous buffer (slices and flips are views).
        result = self._mesh.process(np.ascontiguousarray(frame))
        if not result.multi_face_landmarks:
            return None
        faces = []
        for face in result.multi_face_landmarks:
            xy = np.array([(p.x, p.y) for p in face.landmark], dtype=np.float32)
            if xy.shape != (N_LANDMARKS, 2):
                raise KpcodecError(
                    f"face mesh returned {xy.shape[0]} landmarks, expected {N_LANDMARKS}: "
                    "is mediapipe==0.10.14 installed?"
                )
            faces.append(xy * np.array([width, height], dtype=np.float32))
        return pick_face(faces, near)

    def close(self) -> None:
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def pick_face(faces: Sequence[np.ndarray], near: np.ndarray | None = None) -> np.ndarray | None:
    """The main face of a frame's faces (each ``(478, 2)``): the one nearest ``near`` (mean point
    distance; a decoded frame is scored on the face the original shows) where ``near`` is given
    and finite, else the largest (bounding-box area: the speaker, not a bystander). None if none."""
    if not faces:
        return None
    if near is not None and np.isfinite(near).all():
        return min(faces, key=lambda f: float(np.linalg.norm(f - near, axis=-1).mean()))
    return max(faces, key=lambda f: float(np.ptp(f[:, 0]) * np.ptp(f[:, 1])))


def _as_landmarks(lm: np.ndarray) -> np.ndarray:
    """Check a ``(..., N, 2)`` landmark array (N >= 468) and return it as float64."""
    arr = np.asarray(lm, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-1] != 2 or arr.shape[-2] < 468:
        raise ValueError(f"expected landmarks shaped (..., 478, 2), got {arr.shape}")
    return arr


def _pair_distance(arr: np.ndarray, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Mean distance over index pairs, for every leading index of ``arr``."""
    upper = arr[..., [p[0] for p in pairs], :]
    lower = arr[..., [p[1] for p in pairs], :]
    return np.linalg.norm(upper - lower, axis=-1).mean(axis=-1)


def _inter_ocular(arr: np.ndarray) -> np.ndarray:
    return np.linalg.norm(arr[..., EYE_CORNERS[0], :] - arr[..., EYE_CORNERS[1], :], axis=-1)


def _scalar_or_array(value: np.ndarray) -> float | np.ndarray:
    return float(value) if value.ndim == 0 else value


def lip_gap(lm: np.ndarray) -> float | np.ndarray:
    """Inner-lip vertical opening over the inter-ocular distance.

    Mean distance of the inner-lip pairs 13-14, 82-87 and 312-317, divided by the
    distance between the outer eye corners (33, 263). ``lm`` is ``(478, 2)`` (returns a
    float) or ``(..., 478, 2)`` (returns an array over the leading axes). NaN landmarks
    give NaN.
    """
    arr = _as_landmarks(lm)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _scalar_or_array(_pair_distance(arr, LIP_PAIRS) / _inter_ocular(arr))


def eye_opening(lm: np.ndarray) -> float | np.ndarray:
    """Mean eyelid opening of both eyes over the inter-ocular distance.

    Mean of the lid distances 159-145 and 386-374, divided by the distance between the
    outer eye corners (33, 263). Shapes as for ``lip_gap``.
    """
    arr = _as_landmarks(lm)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _scalar_or_array(_pair_distance(arr, EYE_PAIRS) / _inter_ocular(arr))


def landmark_error(lm_a: np.ndarray, lm_b: np.ndarray) -> float:
    """Mean L2 distance in pixels between corresponding landmarks (any leading axes)."""
    a = _as_landmarks(lm_a)
    b = _as_landmarks(lm_b)
    if a.shape != b.shape:
        raise ValueError(f"landmark shapes differ: {a.shape} vs {b.shape}")
    return float(np.linalg.norm(a - b, axis=-1).mean())


def _pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation over the pairs where both are finite.

    None when fewer than 3 such pairs, or when either side is constant (correlation is
    undefined there; returning 0 or 1 would be a made-up number).
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if xs.size < 3:
        return None
    # Exact test: np.std of a constant can come out as 1e-17 instead of 0.
    if np.ptp(xs) == 0 or np.ptp(ys) == 0:
        return None
    r = float(np.corrcoef(xs, ys)[0, 1])
    return r if math.isfinite(r) else None


def fidelity_from_landmarks(
    original: Iterable[np.ndarray | None], decoded: Iterable[np.ndarray | None]
) -> dict[str, Any]:
    """``motion_fidelity`` on landmarks already detected.

    Each item is a ``(478, 2)`` array, or ``None`` (or an array containing NaN, as in the
    landmark cache) for a frame without a face. The sequences must be equally long.
    Keys as for ``motion_fidelity``.
    """
    frames = 0
    errors: list[float] = []
    gaps_a: list[float] = []
    gaps_b: list[float] = []
    eyes_a: list[float] = []
    eyes_b: list[float] = []
    sentinel = object()
    it_a, it_b = iter(original), iter(decoded)
    while True:
        a = next(it_a, sentinel)
        b = next(it_b, sentinel)
        if a is sentinel and b is sentinel:
            break
        if a is sentinel or b is sentinel:
            raise ValueError("original and decoded sequences differ in length")
        frames += 1
        if a is None or b is None:
            continue
        arr_a = _as_landmarks(a)
        arr_b = _as_landmarks(b)
        if not (np.isfinite(arr_a).all() and np.isfinite(arr_b).all()):
            continue
        errors.append(landmark_error(arr_a, arr_b))
        gaps_a.append(lip_gap(arr_a))
        gaps_b.append(lip_gap(arr_b))
        eyes_a.append(eye_opening(arr_a))
        eyes_b.append(eye_opening(arr_b))
    both = len(errors)
    return {
        "frames": frames,
        "frames_both_found": both,
        "face_found_share": both / frames if frames else None,
        "landmark_error_px": float(np.mean(errors)) if errors else None,
        "lip_gap_corr": _pearson(gaps_a, gaps_b),
        "eye_opening_corr": _pearson(eyes_a, eyes_b),
    }


def detect_video(frames: Iterable[np.ndarray], near: Sequence[np.ndarray | None] | None = None,
                 factory: Any = None) -> list[np.ndarray | None]:
    """The main face's landmarks in every frame of one video (RGB uint8), one tracker for it
    (video mode); with `near` (the original's landmarks, frame by frame) a decoded video's faces
    are matched to the original's (``pick_face``). `factory`: the landmarker class (tests)."""
    with (factory or FaceLandmarker)() as marker:
        return [marker.detect(f, near=None if near is None else near[n]) for n, f in enumerate(frames)]


def motion_fidelity(
    originals: Iterable[np.ndarray], decoded: Iterable[np.ndarray]
) -> dict[str, Any]:
    """How well decoded frames keep the original's face motion.

    ``originals`` and ``decoded`` yield RGB uint8 ``(H, W, 3)`` frames of one video, in
    order and equally many. Each sequence gets its own landmarker, since video mode
    tracks from frame to frame; a decoded frame is scored on the face nearest to the
    original's (``pick_face``). Returns a dict:

    * ``frames``: frames compared;
    * ``frames_both_found``: frames with a face found in both;
    * ``face_found_share``: ``frames_both_found / frames`` (None for no frames);
    * ``landmark_error_px``: mean landmark error in pixels over those frames (None if none);
    * ``lip_gap_corr``, ``eye_opening_corr``: Pearson correlation between original and
      decoded lip gap / eye opening over those frames; None when fewer than 3 frames or
      when either side does not vary.
    """
    marks = detect_video(originals)
    decoded = list(decoded)
    if len(decoded) != len(marks):
        raise ValueError("original and decoded sequences differ in length")
    return fidelity_from_landmarks(marks, detect_video(decoded, near=marks))
