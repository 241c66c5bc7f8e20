"""`python -m huginn_db.lm_eval`: lm-eval's own CLI with the `huginn_db` model registered and
the local tasks on the include path."""

from __future__ import annotations

import sys

import huginn_db.lm_eval.model  # noqa: F401  (registers the model)
from huginn_db.lm_eval.tasks import task_dir


def main(argv: list[str] | None = None) -> None:
    """lm-eval's CLI; `run`/`ls`/`validate` get the local tasks unless --include_path is given."""
    from lm_eval.__main__ import cli_evaluate

    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ("run", "ls", "validate")
    if argv and argv[0] not in commands + ("-h", "--help"):
        argv.insert(0, "run")  # lm-eval's legacy form: no sub-command means run
    if argv and argv[0] in commands and not any(a.split("=")[0] == "--include_path" for a in argv):
        argv += ["--include_path", str(task_dir())]
    sys.argv = [sys.argv[0]] + argv
    cli_evaluate()


if __name__ == "__main__":
    main()
