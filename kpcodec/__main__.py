"""`python -m kpcodec ...` runs the `kpcodec` command (for environments without the script)."""
from kpcodec.cli import app

app(prog_name="kpcodec")
