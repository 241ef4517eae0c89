"""The one definition of "this narrow value fits its wide column", and the SQL forms derived from it.

A narrow row names its value's format (``value_format``); the value is in the source column of
that format. A column type takes the formats listed for it in :data:`FITS`, from that column, when
the value is not NULL; a Decimal for a bigint column must also be a whole number in bigint's range.
Every other row is a reject. The pivot applies the rule to arrays (:mod:`narrow2wide.engine.pivot`);
the reject files and the validator use the SQL built here from the same table.
"""

from __future__ import annotations

from dataclasses import dataclass

BIGINT_MIN = -(2.0**63)  # the smallest float8 that is a bigint
BIGINT_END = 2.0**63  # the first float8 past the largest bigint


@dataclass(frozen=True)
class Fit:
    """One accepted (column type, value format): the source column and how the wide column shows the value."""

    source_column: str
    as_text: str = "::text"  # the cast that renders the value as the wide column does
    whole_bigint: bool = False  # a float8 that must be a whole number in bigint's range


# column type -> value format -> how it fits; a type not listed here (text) takes :data:`TEXT_FITS`
FITS: dict[str, dict[str, Fit]] = {
    "double precision": {"Decimal": Fit("double_v"), "Integer": Fit("long_v", "::float8::text")},
    "bigint": {"Integer": Fit("long_v"), "Decimal": Fit("double_v", "::bigint::text", whole_bigint=True)},
    "boolean": {"Boolean": Fit("bool_v")},
}
TEXT_FITS: dict[str, Fit] = {"String": Fit("str_v", ""), "Decimal": Fit("double_v"), "Integer": Fit("long_v"),
                             "Boolean": Fit("bool_v")}


def _whole_bigint_sql(value: str) -> str:
    return (f"{value} = trunc({value}) AND {value} >= CAST({int(BIGINT_MIN)} AS float8) "
            f"AND {value} < CAST({int(BIGINT_END)} AS float8)")


def _by_type(per_format: str, type_column: str) -> str:
    """``CASE <type> WHEN ... END`` over :data:`FITS`, ``per_format(fits)`` giving each branch."""
    branches = "".join(f"\n  WHEN '{pg_type}' THEN {per_format(fits)}" for pg_type, fits in FITS.items())
    return f"CASE {type_column}{branches}\n  ELSE {per_format(TEXT_FITS)}\nEND"


def fits_sql(source: str = "s", type_column: str = "m.ty") -> str:
    """A boolean SQL expression: the row ``source`` fits the column type in ``type_column``."""
    def per_format(fits: dict[str, Fit]) -> str:
        whens = " ".join(
            f"WHEN '{fmt}' THEN "
            + (_whole_bigint_sql(f"{source}.{fit.source_column}") if fit.whole_bigint
               else f"{source}.{fit.source_column} IS NOT NULL")
            for fmt, fit in fits.items())
        return f"CASE {source}.value_format {whens} END"

    return _by_type(per_format, type_column) + " IS TRUE"


def value_text_sql(source: str = "s", type_column: str = "m.ty") -> str:
    """The row's value as text, as its wide column of type ``type_column`` renders it; NULL when it does not fit."""
    def per_format(fits: dict[str, Fit]) -> str:
        whens = []
        for fmt, fit in fits.items():
            value = f"{source}.{fit.source_column}"
            shown = f"{value}{fit.as_text}"
            whens.append(f"WHEN '{fmt}' THEN "
                         + (f"CASE WHEN {_whole_bigint_sql(value)} THEN {shown} END" if fit.whole_bigint else shown))
        return f"CASE {source}.value_format {' '.join(whens)} END"

    return _by_type(per_format, type_column)
