"""python -m app: the command line, as the task-manager script runs it."""

from app.cli import main

main()
