"""`python -m kpcodec.train ...` is the same as `kpcodec train ...`."""
from kpcodec.cli import app

if __name__ == "__main__":
    import sys

    sys.argv.insert(1, "train")
    app()
