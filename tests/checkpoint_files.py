"""Test helpers: damage a checkpoint on disk, and snapshot a directory tree byte for byte."""

import os


def damage(directory, how: str = "truncate") -> None:
  """Truncates ("truncate") or flips bytes in ("flip") every array data file of a checkpoint."""
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(directory) for f in fs
                 if os.path.basename(d) == "d")  # the array data files
  assert files, f"no data files under {directory}"
  for path in files:
    with open(path, "r+b") as f:
      if how == "truncate":
        f.truncate(os.path.getsize(path) // 2)
      else:  # flip bytes in the middle of the data
        f.seek(os.path.getsize(path) // 2)
        chunk = f.read(8)
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


def snapshot(root) -> dict:
  """Every path under `root` with its bytes (directories map to None)."""
  out = {}
  for d, dirs, files in os.walk(root):
    for name in dirs:
      out[os.path.relpath(os.path.join(d, name), root)] = None
    for name in files:
      path = os.path.join(d, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = f.read()
  return out
