"""python -m apps.sample: the sample partner app (apps/sample/app.py)."""

from apps.sample.app import main

main()
