"""tsctl.tables: which columns fit a terminal, checked on random tables and drawn by
rich for real (the drawn lines are measured, not the layout's own sums)."""

from __future__ import annotations

import io
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.console import Console
from tsctl.tables import (
    BOXED,
    DATA,
    KEY,
    PLAIN,
    TEXT,
    Column,
    Frame,
    Layout,
    draw,
    fit,
    natural_widths,
    note,
    ranks,
)

# No "…" in the input: any ellipsis in the output was made by cutting a cell.
WORD = st.text(st.sampled_from("abcdefghij-_.:/ 0123456789—│é"), min_size=0, max_size=30)
FRAMES = st.sampled_from([BOXED, PLAIN, Frame(edge=False), Frame(boxed=False, padding=0),
                          Frame(boxed=False, pad_edge=False)])


@st.composite
def tables(draw_):
    n = draw_(st.integers(1, 7))
    columns = [Column(draw_(st.text(st.sampled_from("abcdefgh /"), min_size=1, max_size=9)),
                      kind=draw_(st.sampled_from([KEY, DATA, DATA, TEXT])),
                      priority=draw_(st.integers(0, 3)),
                      justify=draw_(st.sampled_from(["left", "right"])),
                      min_width=draw_(st.integers(1, 15)))
               for _ in range(n)]
    cell = st.one_of(WORD, st.builds(lambda a, b: f"{a}\n{b}", WORD, WORD))
    rows = draw_(st.lists(st.lists(cell, min_size=n, max_size=n), max_size=5))
    return columns, rows


@dataclass(frozen=True)
class Case:
    """A random table, a width and a frame, and what ``fit`` chose for them."""

    columns: list[Column]
    rows: list[list[str]]
    width: int
    frame: Frame
    layout: Layout


@st.composite
def laid_out(draw_):
    columns, rows = draw_(tables())
    width, frame = draw_(st.integers(1, 160)), draw_(FRAMES)
    return Case(columns, rows, width, frame, fit(columns, rows, width, frame))


PROPERTY = settings(max_examples=300, deadline=None)


def rendered(columns, layout: Layout, rows, frame: Frame) -> list[str]:
    """The lines rich draws, on a console far wider than the table: nothing makes rich
    squeeze it, so a wrong sum in the layout shows as a wrong width."""
    console = Console(width=layout.width + 200, file=io.StringIO(), color_system=None)
    console.print(draw(columns, layout, rows, frame))
    return console.file.getvalue().splitlines()


def keys_width(columns, rows, frame: Frame) -> int:
    natural = natural_widths(columns, rows)
    keys = [i for i, c in enumerate(columns) if c.kind == KEY]
    return sum(natural[i] for i in keys) + frame.overhead(len(keys))


@PROPERTY
@given(laid_out())
def test_a_table_fits_whenever_its_key_columns_do(case):
    columns, rows, width, frame, layout = (case.columns, case.rows, case.width, case.frame,
                                           case.layout)
    lines = rendered(columns, layout, rows, frame)
    drawn = max(cell_len(line) for line in lines)
    assert drawn == layout.width  # the layout's sum is what rich draws
    if keys_width(columns, rows, frame) <= width:
        assert layout.fits and drawn <= width, (layout, lines)
    else:
        assert not layout.fits


@PROPERTY
@given(laid_out())
def test_no_column_is_dropped_while_a_lesser_one_is_shown(case):
    columns, rows, layout = case.columns, case.rows, case.layout
    hidden = [i for i in range(len(columns)) if i not in layout.shown]
    rank = ranks(columns, rows)
    assert all(columns[i].kind != KEY for i in hidden)
    for h in hidden:
        for s in layout.shown:
            assert rank[h] < rank[s], (columns[h], columns[s])
    assert layout.hidden == tuple(columns[i].header for i in
                                  sorted(hidden, key=rank.__getitem__, reverse=True))


@PROPERTY
@given(laid_out())
def test_only_text_is_cut_only_once_data_is_gone_and_never_below_its_floor(case):
    columns, rows, layout = case.columns, case.rows, case.layout
    natural = natural_widths(columns, rows)
    rank = ranks(columns, rows)  # [0]: 2 KEY, 1 TEXT, 0 DATA, -1 empty
    for i, w in zip(layout.shown, layout.widths, strict=True):
        if w < natural[i]:
            assert columns[i].kind == TEXT and w >= columns[i].floor
            assert all(columns[j].kind == KEY or rank[j][0] > 0 for j in layout.shown)
        else:
            assert w == natural[i]
    assert layout.cut == tuple(columns[i].header for i, w in
                               zip(layout.shown, layout.widths, strict=True)
                               if w < natural[i])


@PROPERTY
@given(laid_out())
def test_key_cells_are_drawn_whole_and_uncut_cells_never_end_in_an_ellipsis(case):
    columns, rows, frame, layout = case.columns, case.rows, case.frame, case.layout
    text = "\n".join(rendered(columns, layout, rows, frame))
    for row in rows:
        for i in layout.shown:
            if columns[i].kind == KEY:
                for line in row[i].split("\n"):
                    assert line.strip() in text
    if not layout.cut:
        assert "…" not in text


@settings(max_examples=300, deadline=None)
@given(tables(), st.integers(1, 160), FRAMES)
def test_what_is_hidden_would_not_have_fitted(table, width, frame):
    """Columns are dropped only while needed: the best hidden one, added back at its
    narrowest, makes the table too wide."""
    columns, rows = table
    layout = fit(columns, rows, width, frame)
    hidden = [i for i in range(len(columns)) if i not in layout.shown]
    if not hidden:
        return
    rank = ranks(columns, rows)
    best = max(hidden, key=rank.__getitem__)
    natural = natural_widths(columns, rows)
    with_it = sorted([*layout.shown, best])

    def narrowest(i: int) -> int:
        if rank[best][0] <= 0:  # DATA or empty: dropped before any cutting, at full width
            return natural[i]
        return min(natural[i], columns[i].floor) if columns[i].kind == TEXT else natural[i]

    assert sum(narrowest(i) for i in with_it) + frame.overhead(len(with_it)) > width


@given(tables(), FRAMES)
def test_no_limit_shows_every_column_whole(table, frame):
    columns, rows = table
    layout = fit(columns, rows, None, frame)
    assert layout.shown == tuple(range(len(columns))) and not layout.hidden
    assert layout.widths == tuple(natural_widths(columns, rows)) and note(layout) is None


def test_an_empty_column_goes_first_whatever_its_kind():
    columns = [Column("node", KEY), Column("error", TEXT), Column("reals", priority=1)]
    rows = [["tree1", "", "10.0.0.1:80"]]
    assert fit(columns, rows, 30, BOXED).hidden == ("error",)
    rows = [["tree1", "refused", "10.0.0.1:80"]]
    assert fit(columns, rows, 30, BOXED).hidden == ("reals",)


def test_the_note_names_what_was_left_out():
    columns = [Column("node", KEY), Column("tags", priority=1), Column("groups", priority=2),
               Column("command", TEXT, min_width=5)]
    rows = [["tree1", "eu west", "frontend", "echo a long command line here"]]
    layout = fit(columns, rows, 30, PLAIN)
    assert layout.hidden == ("groups", "tags") and layout.cut == ("command",)
    assert note(layout) == ("(2 columns hidden: groups, tags; cut short: command; "
                            "widen the terminal or use --wide/--json)")
    assert note(fit(columns, rows, None, PLAIN)) is None
