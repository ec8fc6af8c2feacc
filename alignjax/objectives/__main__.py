"""`python -m alignjax.objectives [--write docs/OBJECTIVES.md]`: the registered methods.

Prints the Markdown table of every registered method (name, what it is, fields with their
defaults, gradient accumulation). `--write PATH` replaces the table between the
`<!-- methods:begin -->` and `<!-- methods:end -->` markers of PATH instead.
"""

from __future__ import annotations

import sys

from alignjax.objectives import base

BEGIN, END = '<!-- methods:begin -->', '<!-- methods:end -->'


def replace_table(text: str, table: str) -> str:
    """`text` with the block between the markers replaced by `table`."""
    if BEGIN not in text or END not in text:
        raise ValueError(f'No {BEGIN} ... {END} block to replace.')
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f'{head}{BEGIN}\n{table}{END}{tail}'


def main(argv: list[str]) -> None:
    table = base.methods_table()
    if argv[:1] == ['--write'] and len(argv) == 2:
        with open(argv[1]) as f:
            text = f.read()
        with open(argv[1], 'w') as f:
            f.write(replace_table(text, table))
    elif argv:
        raise SystemExit('usage: python -m alignjax.objectives [--write docs/OBJECTIVES.md]')
    else:
        sys.stdout.write(table)


if __name__ == '__main__':
    main(sys.argv[1:])
