"""Which columns of a table to show in a terminal of a given width. Pure.

Every tsctl table (``status``, ``docker ps``, ``lb ls``, ``event ls``, the monitor)
says what its columns are worth and lets ``fit`` choose, the way ``docker ps`` and
``kubectl get`` do, instead of letting the renderer squeeze every column to a stub:

- A ``KEY`` column identifies the row (a node name, a container name, a handler id):
  always shown, never cut, whatever the width.
- A ``DATA`` column (the default) is shown whole or not at all. When the table is too
  wide, DATA columns are dropped, the one of lowest ``priority`` first (on a tie, the
  rightmost), until the rest fit.
- A ``TEXT`` column is long free text (a command line, an error). It outranks every
  DATA column: only once they are all gone is it cut short with an ellipsis, never
  below ``floor`` (its ``min_width``, or its header if that is wider); if the table
  still does not fit, TEXT columns are dropped too, lowest priority first.
- A column with nothing in it (every cell empty) ranks below all others but KEY
  columns: dropping it loses nothing.
- So a column is never dropped while one ranked below it (kind, then priority, then
  position) is shown, and whenever the KEY columns fit, the table fits. When even they
  do not, they are shown whole anyway: a line too long beats a name cut in half.
- ``width=None`` means no limit (``--wide``, or output that is not a terminal): every
  column at its full width.

``fit`` returns a ``Layout`` (shown columns, their widths, what was hidden or cut);
``draw`` makes the rich Table of it, with fixed widths that add up to exactly
``Layout.width``, so rich never has to squeeze anything; ``note`` is the line that says
what was left out. Cells are plain strings (not rich markup) or rich Text.

Must not touch: the terminal or any output (the caller measures the width and prints),
what a command's columns hold (the command builds its rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from rich import box as rich_box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

KEY, DATA, TEXT = "key", "data", "text"
Kind = Literal["key", "data", "text"]
Cell = str | Text | None
_RANK = {DATA: 0, TEXT: 1, KEY: 2}
WIDE_HINT = "widen the terminal or use --wide/--json"


@dataclass(frozen=True)
class Column:
    """One column: its header, what it is worth and how it is aligned."""

    header: str
    kind: Kind = DATA
    priority: int = 0  # among columns of its kind: higher stays longer
    justify: Literal["left", "right"] = "left"
    min_width: int = 12  # TEXT only: the narrowest it is cut to
    style: str | None = None

    @property
    def floor(self) -> int:
        """The narrowest this column is ever drawn (TEXT columns may be cut to it)."""
        return max(self.min_width, cell_len(self.header)) if self.kind == TEXT else 0


@dataclass(frozen=True)
class Frame:
    """How a table is drawn around its cells: what it costs beyond their widths."""

    boxed: bool = True  # rules between columns (rich's default box)
    edge: bool = True  # with boxed: a rule at either side too
    padding: int = 1  # spaces on either side of every cell
    pad_edge: bool = True  # the first cell's left and last cell's right padding too

    def overhead(self, n: int) -> int:
        """Characters a row of ``n`` columns takes beyond the cells themselves."""
        if n == 0:
            return 0
        total = 2 * self.padding * n - (0 if self.pad_edge else 2 * self.padding)
        if self.boxed:
            total += (n - 1) + (2 if self.edge else 0)
        return total

    def table(self, **kw) -> Table:
        """An empty rich Table drawn this way (``kw``: title, header_style, ...)."""
        return Table(box=rich_box.HEAVY_HEAD if self.boxed else None,
                     show_edge=self.edge, padding=(0, self.padding),
                     pad_edge=self.pad_edge, **kw)


BOXED = Frame()
PLAIN = Frame(boxed=False)


@dataclass(frozen=True)
class Layout:
    """What ``fit`` chose: the shown columns (indices, in table order) and widths."""

    shown: tuple[int, ...]
    widths: tuple[int, ...]  # one per shown column, padding excluded
    width: int  # the whole table's width as drawn
    hidden: tuple[str, ...] = ()  # headers of the dropped columns, most useful first
    cut: tuple[str, ...] = ()  # headers of the TEXT columns drawn narrower than content
    fits: bool = True  # False only when the KEY columns alone are wider than allowed
    natural: tuple[int, ...] = field(default=(), repr=False)  # every column's own width


def text_width(cell: Cell) -> int:
    """Terminal cells the widest line of ``cell`` takes."""
    plain = cell.plain if isinstance(cell, Text) else (cell or "")
    return max((cell_len(line) for line in plain.split("\n")), default=0)


def natural_widths(columns: Sequence[Column], rows: Sequence[Sequence[Cell]]) -> list[int]:
    """Each column's width when nothing is cut: its widest cell or its header."""
    widths = [max(1, cell_len(c.header)) for c in columns]
    for row in rows:
        for i, cell in enumerate(row[:len(columns)]):
            widths[i] = max(widths[i], text_width(cell))
    return widths


def ranks(columns: Sequence[Column], rows: Sequence[Sequence[Cell]]
          ) -> list[tuple[int, int, int]]:
    """Each column's rank (higher ranks are kept longer): KEY over TEXT over DATA over
    an empty column, then priority, then the leftmost."""
    filled = [False] * len(columns)
    for row in rows:
        for i, cell in enumerate(row[:len(columns)]):
            filled[i] = filled[i] or text_width(cell) > 0
    return [(_RANK[c.kind] if filled[i] or c.kind == KEY else -1, c.priority, -i)
            for i, c in enumerate(columns)]


def fit(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int | None,
        frame: Frame = BOXED) -> Layout:
    """Choose the columns to show within ``width`` terminal cells (None: all of them);
    see the module docstring for the rules."""
    natural = natural_widths(columns, rows)
    rank = ranks(columns, rows)
    shown = list(range(len(columns)))

    def layout(widths: dict[int, int], fits: bool = True) -> Layout:
        hidden = sorted(set(range(len(columns))) - set(shown), key=rank.__getitem__,
                        reverse=True)
        return Layout(tuple(shown), tuple(widths[i] for i in shown),
                      sum(widths[i] for i in shown) + frame.overhead(len(shown)),
                      tuple(columns[i].header for i in hidden),
                      tuple(columns[i].header for i in shown if widths[i] < natural[i]),
                      fits, tuple(natural))

    full = dict(enumerate(natural))
    if width is None:
        return layout(full)

    def total(widths: dict[int, int]) -> int:
        return sum(widths[i] for i in shown) + frame.overhead(len(shown))

    def lowest(kind: str) -> int | None:
        """The lowest-ranked shown column of ``kind`` or of a kind below it."""
        below = [i for i in shown if rank[i][0] <= _RANK[kind]]
        return min(below, key=rank.__getitem__) if below else None

    while total(full) > width and (drop := lowest(DATA)) is not None:
        shown.remove(drop)
    if total(full) <= width:
        return layout(full)
    while True:
        narrowed = _narrow(columns, shown, full, total(full) - width)
        if total(narrowed) <= width:
            return layout(narrowed)
        drop = lowest(TEXT)
        if drop is None:  # only KEY columns left, and they do not fit: show them whole
            return layout(full, fits=False)
        shown.remove(drop)


def _narrow(columns: Sequence[Column], shown: list[int], widths: dict[int, int],
            excess: int) -> dict[int, int]:
    """``widths`` with the shown TEXT columns cut by ``excess`` cells in all, the widest
    first, none below its floor (so the result may still be too wide)."""
    out = dict(widths)
    texts = [i for i in shown if columns[i].kind == TEXT]
    while excess > 0:
        room = [i for i in texts if out[i] > min(columns[i].floor, widths[i])]
        if not room:
            break
        widest = max(room, key=lambda i: (out[i], -i))
        others = [out[i] for i in room if i != widest]
        floor = min(columns[widest].floor, widths[widest])
        target = max(max(others, default=floor), floor, out[widest] - excess)
        step = max(1, out[widest] - target)
        out[widest] -= step
        excess -= step
    return out


def draw(columns: Sequence[Column], layout: Layout, rows: Sequence[Sequence[Cell]],
         frame: Frame = BOXED, **table_kw) -> Table:
    """The rich Table of ``rows`` laid out by ``layout`` (``table_kw``: title,
    header_style, ... for rich)."""
    table = frame.table(**table_kw)
    for i, w in zip(layout.shown, layout.widths, strict=True):
        c = columns[i]
        table.add_column(c.header, width=w, min_width=w, max_width=w, no_wrap=True,
                         overflow="ellipsis" if c.kind == TEXT else "fold",
                         justify=c.justify, style=c.style)
    for row in rows:
        table.add_row(*(_text(row[i] if i < len(row) else None) for i in layout.shown))
    return table


def _text(cell: Cell) -> Text:
    return cell if isinstance(cell, Text) else Text(cell or "")


def note(layout: Layout, hint: str = WIDE_HINT) -> str | None:
    """'(2 columns hidden: tags, groups; widen the terminal or use --wide/--json)', or
    None when the table is shown whole."""
    parts = []
    if layout.hidden:
        n = len(layout.hidden)
        parts.append(f"{n} column{'s' if n != 1 else ''} hidden: {', '.join(layout.hidden)}")
    if layout.cut:
        parts.append(f"cut short: {', '.join(layout.cut)}")
    if not parts:
        return None
    return f"({'; '.join(parts)}; {hint})"
