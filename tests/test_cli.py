import subprocess
import sys
from pathlib import Path

from kit import cli
from conftest import run_cli_without_tensorflow


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_is_a_usage_error(capsys):
    assert cli.main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_no_arguments_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "commands:" in capsys.readouterr().out


def test_help_does_not_import_tensorflow():
    code = ("import sys; from kit import cli; cli.main(['--help']); "
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_table_commands_run_without_tensorflow(tmp_path):
    """labels, score, tune, validate and leaderboard work on CSVs alone: no TF import."""
    (tmp_path / "stage_2_train_labels.csv").write_text(
        "patientId,x,y,width,height,Target\na,100.0,100.0,200.0,300.0,1\nb,,,,,0\n")
    (tmp_path / "raw.csv").write_text("patientId,score,x,y,w,h\na,0.9,110,100,200,300\n"
                                      "b,0.2,10,10,50,50\n")
    (tmp_path / "sub.csv").write_text("patientId,PredictionString\na,0.9 110 100 200 300\nb,\n")
    (tmp_path / "stage_2_sample_submission.csv").write_text(
        "patientId,PredictionString\na,0.5 0 0 100 100\nb,0.5 0 0 100 100\n")
    d, labels, board = str(tmp_path), str(tmp_path / "stage_2_train_labels.csv"), \
        str(tmp_path / "board.csv")
    calls = [["labels", "--data", d, "--json"],
             ["score", "--submission", f"{d}/raw.csv", "--raw", "--labels", labels,
              "--leaderboard", board],
             ["score", "--submission", f"{d}/sub.csv", "--labels", labels, "--leaderboard", board],
             ["tune", "--raw", f"{d}/raw.csv", "--labels", labels, "--out", f"{d}/pp.json",
              "--plot", f"{d}/tuning.png"],
             ["validate", "--submission", f"{d}/sub.csv", "--data", d],
             ["leaderboard", "--leaderboard", board]]
    run_cli_without_tensorflow(calls, tmp_path)
    assert (tmp_path / "pp.json").is_file() and (tmp_path / "board.csv").is_file()


def _closed_pipe_run(argv, cwd):
    """Run ``python -m kit ARGV`` with its stdout a pipe whose reader is already gone (what
    ``| head`` leaves once it has its lines): (exit code, stderr)."""
    import os

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-m", "kit", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                 # the reader goes away before the first line is written
    err = proc.stderr.read().decode()
    return proc.wait(timeout=120), err


def test_a_closed_pipe_ends_quietly(tmp_path):
    (tmp_path / "labels.csv").write_text("patientId,x,y,width,height,Target\n"
                                         "a,100,100,200,300,1\nb,,,,,0\n")
    (tmp_path / "sub.csv").write_text("patientId,PredictionString\na,0.9 110 100 200 300\nb,\n")
    rows = "".join(f"2024-01-01 00:00:00,f{i}.csv,{i:064d},test,L,,2,0,1,0.5\n" for i in range(50))
    (tmp_path / "board.csv").write_text(
        "time,file,sha256,split,labels,ids,images,missing,excluded,map\n" + rows)
    for argv in (["leaderboard", "--json", "--leaderboard", "board.csv"],
                 ["score", "--submission", "sub.csv", "--labels", "labels.csv", "--json",
                  "--no-leaderboard"]):
        code, err = _closed_pipe_run(argv, tmp_path)
        assert (code, err) == (141, ""), argv


def _actions(parser):
    """Every action of a parser and of its subcommands' parsers."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        else:
            yield parser.prog, action


def test_every_flag_of_every_command_has_help():
    import argparse

    missing = []
    for command in cli.COMMANDS:
        for prog, action in _actions(cli.build_parser(command)):
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{prog} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "flags without help: " + ", ".join(missing)


FINISH = """
import atexit, sys, threading, time, types
sys.modules.setdefault("tensorflow", types.ModuleType("tensorflow"))   # as after a TF command
from kit.cli import exit_process
atexit.register(lambda: print("atexit ran", flush=True))
worker = threading.Thread(target=lambda: (time.sleep(0.3), print("thread finished")))
worker.start()
print("output", end="")          # unflushed: exit_process flushes it
exit_process(3)
print("not reached")
"""


def test_exit_after_tensorflow_keeps_code_output_threads_and_atexit():
    proc = subprocess.run([sys.executable, "-c", FINISH], capture_output=True, text=True,
                          timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 3, proc.stderr
    # the thread was joined (its line), the atexit handler ran, the unflushed text came out
    assert proc.stdout == "outputthread finished\natexit ran\n", proc.stdout
    assert "not reached" not in proc.stdout
