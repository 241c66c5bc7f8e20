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
    if argv and argv[0] == "run" and (problem := _precheck(argv[1:])):
        print(f"huginn_db.lm_eval: error: {problem}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0]] + argv
    cli_evaluate()


def _precheck(argv: list[str]) -> str | None:
    """For a huginn_db model: the one-line reason its tasks cannot be scored (a missing local
    data file, text its tokenizer cannot encode), found before lm-eval scores anything."""
    import argparse

    from lm_eval.utils import simple_parse_args_string

    from huginn_db.errors import ConfigError
    from huginn_db.lm_eval.tasks import check_data_files, check_encodable, task_manager

    ap = argparse.ArgumentParser(add_help=False)
    for flag in ("--model", "--model_args", "--tasks", "--include_path"):
        ap.add_argument(flag, default=None)
    args, _ = ap.parse_known_args(argv)
    model_args = simple_parse_args_string(args.model_args) if args.model_args else {}
    if args.model != "huginn_db" or not args.tasks or "checkpoint" not in model_args:
        return None
    if args.include_path != str(task_dir()):  # the user's own task tree: lm-eval's to resolve
        return None
    tasks = args.tasks.split(",")
    try:
        check_data_files(tasks)
        manager = task_manager(tasks, metadata={"checkpoint": model_args["checkpoint"]})
        check_encodable(tasks, manager, model_args["checkpoint"])
    except (ConfigError, ValueError, FileNotFoundError) as err:
        return str(err).strip("'\"")
    return None


if __name__ == "__main__":
    main()
