"""The systemd unit `tsctl build` writes (treescale.provision.plan.unit_text): its text
for an ordinary node, and the escaping that makes systemd run exactly the node's command
whatever the install root and node name hold. tests/system/test_systemd_build.py runs
the unit under a real systemd; this pins the text."""

from __future__ import annotations

import pytest

from treescale.provision import plan as P


def test_an_ordinary_node_gets_a_readable_unit_that_always_restarts_it():
    lay = P.Layout("/opt/treescale", "web-1")
    assert lay.unit_name == "treescale-web-1.service"
    assert lay.unit_path == "/etc/systemd/system/treescale-web-1.service"
    assert P.unit_text(lay, lay.db) == """\
# TreeScale node web-1, written by `tsctl build`.
[Unit]
Description=TreeScale node web-1
After=network-online.target
Wants=network-online.target
# never give up restarting: the tree needs the node back
StartLimitIntervalSec=0

[Service]
Environment=TREE_DB_PATH=/opt/treescale/tree.db PYTHONUNBUFFERED=1
WorkingDirectory=/opt/treescale
ExecStart=/opt/treescale/venv/bin/python -m tsctl.main node start \
--config /opt/treescale/tree.db --name web-1
Restart=always
RestartSec=2
# well within the time `tsctl build` and `teardown` wait for a stop
TimeoutStopSec=20

[Install]
WantedBy=multi-user.target
"""


def test_specifiers_variables_quotes_and_spaces_in_paths_stay_literal():
    lay = P.Layout('/srv/tree scale/%n $HOME/"q"\\b', "n1")
    text = P.unit_text(lay, lay.db)
    root = '/srv/tree scale/%%n $$HOME/\\"q\\"\\\\b'  # as systemd must read it
    # $ stays single in the program's path: systemd expands no variables there
    program = root.replace("$$", "$")
    assert f'ExecStart="{program}/venv/bin/python" -m tsctl.main node start ' \
        f'--config "{root}/tree.db" --name n1\n' in text
    # no variables are expanded in Environment= or WorkingDirectory=, specifiers are
    assert 'Environment="TREE_DB_PATH=/srv/tree scale/%%n $HOME/\\"q\\"\\\\b/tree.db" ' \
        "PYTHONUNBUFFERED=1\n" in text
    assert 'WorkingDirectory=/srv/tree scale/%%n $HOME/"q"\\b\n' in text


def test_exec_line_quotes_only_what_needs_it():
    assert P.exec_line(("/usr/bin/x", "-m", "a.b", "--k=v,w", "user@host")) == \
        "/usr/bin/x -m a.b --k=v,w user@host"
    assert P.exec_line(("/x", "", "a b", "100%", "$PATH")) == \
        '/x "" "a b" "100%%" "$$PATH"'
    assert P.exec_line(("/opt/$x %i/py", "$x")) == '"/opt/$x %%i/py" "$$x"'


@pytest.mark.parametrize(("name", "unit"), [
    ("web-1", "treescale-web-1.service"),
    ("db_2:a", "treescale-db_2:a.service"),
    ("a/b", "treescale-a\\x2fb.service"),         # not a path
    ("x@y", "treescale-x\\x40y.service"),         # not a template instance
    ("50%", "treescale-50\\x25.service"),         # not a specifier
    ("back\\slash", "treescale-back\\x5cslash.service"),  # escapes stay unambiguous
    ("nœud", "treescale-n\\xc5\\x93ud.service"),  # UTF-8 bytes
])
def test_the_unit_name_holds_only_what_systemd_allows(name, unit):
    assert P.Layout("/opt/treescale", name).unit_name == unit
    assert P.unit_text(P.Layout("/opt/treescale", name), "/db").count(
        f"Description=TreeScale node {name.replace('%', '%%')}\n") == 1


def test_an_install_root_with_control_characters_is_refused():
    with pytest.raises(ValueError, match="control characters"):
        P.check_install_root("/opt/tree\nscale")
