"""``qlora-studio gui``: parses its options and refuses a bad recipe with exit code 2."""

from __future__ import annotations

import argparse

from studio.commands import gui


def parse(argv):
    parser = argparse.ArgumentParser(prog="qlora-studio")
    gui.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_gui_takes_a_recipe():
    args = parse(["gui", "--recipe", "r.toml"])
    assert args.command == "gui" and args.recipe == "r.toml"


def test_bad_recipe_exits_2_with_the_key(tmp_path, capsys, qapp):
    bad = tmp_path / "bad.toml"
    bad.write_text("[lora]\nr = 0\n")
    assert gui.run(parse(["gui", "--recipe", str(bad)])) == 2
    err = capsys.readouterr().err
    assert "lora.r" in err and "bad.toml" in err


def test_application_names(qapp):
    from studio import APP_ID, APP_NAME
    from studio.app import ensure_application

    app = ensure_application()
    assert app.applicationName() == APP_NAME
    assert app.desktopFileName() == APP_ID
