"""Human-readable rendering of each mode's result (``--json`` bypasses this)."""

from __future__ import annotations

from collections.abc import Callable

from narrow2wide.store.pause_flags import EVERY_SHIP


def _seed(result) -> str:
    return (
        f"Seeded {result.rows:,} rows into {result.source}: {len(result.ship_ids)} ships "
        f"({', '.join(result.ship_ids)}), {result.channels} channels each, "
        f"{result.start:%Y-%m-%d %H:%M} to {result.end:%Y-%m-%d %H:%M}, in {result.seconds:.1f} s."
    )


def _schema(a) -> str:
    lines = [f"Schema of {a.source_table} ({a.time_type}), column style {a.column_style}"
             + (f", formats sampled over the newest {a.sample_hours:g} h" if a.sample_hours else "")]
    for s in a.ships:
        types: dict[str, int] = {}
        for c in s.channels:
            types[c.pg_type] = types.get(c.pg_type, 0) + 1
        rows = sum(c.row_count or 0 for c in s.channels)
        lines.append(f"  {s.ship_id}: {len(s.channels)} channels ("
                     + ", ".join(f"{n} {t}" for t, n in sorted(types.items())) + ")"
                     + (f", {rows:,} rows" if rows else "")
                     + f", {len(s.parts)} table(s): " + ", ".join(f"{p.table} [{len(p.channels)}]" for p in s.parts))
        for note in s.conflicts:
            lines.append(f"    format conflict: {note}")
        for note in s.unknown_formats:
            lines.append(f"    unknown value_format: {note}")
        for note in s.type_drift:
            lines.append(f"    type drift: {note}")
    lines.append(f"Wrote {a.schema_file} in {a.seconds:.2f} s. Next: python main.py --mode tables-only")
    return "\n".join(lines)


def _tables(r) -> str:
    lines = [f"Wide tables in schema {r.target_schema}:"]
    for s in r.ships:
        bits = []
        if s.dropped:
            bits.append(f"dropped {len(s.dropped)}")
        if s.created:
            bits.append("created " + ", ".join(s.created))
        if s.columns_added:
            bits.append(f"added {s.columns_added} column(s)")
        if s.unchanged:
            bits.append(f"{len(s.unchanged)} unchanged")
        lines.append(f"  {s.ship_id}: " + "; ".join(bits))
    return "\n".join(lines)


def _backfill(r) -> str:
    lines = [f"Backfill: {r.rows_read:,} narrow rows in {r.seconds:.1f} s ({r.rows_per_second:,.0f} rows/s)"]
    for s in r.ships:
        lines.append(f"  {s.ship_id}: cutoff {s.cutoff}, chunks {s.done}/{s.chunks} done, {s.failed} failed, "
                     f"{s.pending} pending; {s.rows_read:,} rows read, {s.cells_written:,} cells written"
                     + (f", {s.rejected:,} rejected (see STATE_DIR/rejects)" if s.rejected else ""))
    for ship, start, end, err in r.failed_chunks:
        lines.append(f"  FAILED {ship} {start} .. {end}: {err}")
    if any(r.held_seconds.values()):
        lines.append("  held: " + _held(r.held_seconds))
    pending = sum(s.pending for s in r.ships)
    if r.retry_command:
        lines.append(f"Retry the failed chunks with: {r.retry_command}")
    elif pending:
        lines.append(f"{pending} chunk(s) are not done (a worker ended early, see the log): run the same "
                     "command again")
    else:
        lines.append("Next: python main.py --mode status, then python main.py --mode validate")
    return "\n".join(lines)


def _lag(seconds) -> str:
    return "-" if seconds is None else f"{seconds:,.0f} s"


def _held(seconds: dict[str, float]) -> str:
    return ", ".join(f"{reason.replace('_', ' ')} {value:,.1f} s" for reason, value in sorted(seconds.items()) if value)


def _scope(scope: str) -> str:
    return "every ship" if scope == EVERY_SHIP else scope


def _duration(seconds) -> str:
    if seconds is None:
        return "unknown (no sample rows)"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"


def _plan(r) -> str:
    lines = [f"Dry run of --mode {r.mode} (database time {r.database_time}); nothing was written.",
             f"  chunks of {r.chunk_hours} h, {r.workers} worker(s)"
             + ("; realtime would start at each ship's cutoff" if r.realtime_from_cutoff else "")]
    for s in r.ships:
        lines.append(f"  {s.ship_id}: cutoff {s.cutoff} ({s.cutoff_from}), history from {s.first_time or '-'}; "
                     f"chunks {s.chunks_done} done, {s.chunks_to_do} to do ({s.chunks_new} new), "
                     f"{s.chunks_failed} failed; {s.hours_to_do:,.1f} h, about {s.estimated_rows:,} rows")
        if s.note:
            lines.append(f"    note: {s.note}")
    lines.append(f"About {r.estimated_rows:,} rows to move; the sample read and pivoted "
                 f"{r.sample_rows_per_second:,.0f} rows/s per worker: ETA {_duration(r.eta_seconds)} "
                 "(the writes overlap the reads)")
    return "\n".join(lines)


def _pause(r) -> str:
    return "\n".join([f"Paused {_scope(scope)} since {since}." for scope, since in r.paused.items()]
                     + ["Running backfills hold within seconds; the next run holds too. Resume: --mode resume"])


def _resume(r) -> str:
    if not r.resumed:
        lines = ["Nothing was paused" + (": the pauses left are listed below." if r.still_paused else ".")]
    else:
        lines = [f"Resumed {_scope(scope)} (paused since {since})." for scope, since in r.resumed.items()]
    lines += [f"Still paused: {_scope(scope)} since {since}." for scope, since in r.still_paused.items()]
    return "\n".join(lines)


def _status(r) -> str:
    lines = [f"Status of schema {r.target_schema} (database time {r.database_time}):"]
    if not r.ships:
        lines.append("  no ships yet: run --mode schema-only and --mode tables-only")
    for s in r.ships:
        paused = f" since {s.paused_since}" if s.status == "paused" else ""
        lines.append(f"  {s.ship_id}: {s.status.upper()}{paused}  {s.percent:.1f}% "
                     f"({s.chunks_done}/{s.chunks_total} chunks, {s.chunks_failed} failed, "
                     f"{s.chunks_running} running, {s.chunks_pending} pending)")
        lines.append("    tables: " + ", ".join(f"{t} [{n} columns]" for t, n in s.tables.items()))
        lines.append(f"    rows read {s.rows_read:,}, cells written {s.cells_written:,}, wide rows {s.record_count:,}, "
                     f"rejected {s.rejected:,}")
        lines.append(f"    cutoff {s.cutoff or '-'}, realtime watermark {s.watermark or '-'}, "
                     f"lag {_lag(s.lag_seconds)}")
        if s.last_error:
            lines.append(f"    last error: {s.last_error}")
    for scope, since in r.paused.items():
        lines.append(f"  backfill PAUSED for {_scope(scope)} since {since} (--mode resume continues it)")
    for reason, now in r.holding_now.items():
        lines.append(f"  {now.workers} backfill worker(s) held now ({reason.replace('_', ' ')}) since {now.since}")
    if any(r.held_seconds.values()):
        lines.append("  backfill held so far: " + _held(r.held_seconds))
    return "\n".join(lines)


def _validate(r) -> str:
    lines = []
    for s in r.ships:
        lines.append(f"{'OK  ' if s.ok else 'FAIL'} {s.ship_id}: {s.message}")
        for d in s.mismatches[:20]:
            lines.append(f"     {d.bucket}: {d.narrow_rows:,} narrow rows vs {d.wide_cells:,} wide cells"
                         + ("" if d.values_match else ", values differ"))
        if len(s.mismatches) > 20:
            lines.append(f"     ... and {len(s.mismatches) - 20} more hour(s)")
    lines.append("Validation passed." if r.ok else "Validation FAILED.")
    return "\n".join(lines)


def _realtime(r) -> str:
    lines = [f"Realtime: {r.cycles} cycle(s), {r.failed_cycles} failed, {r.rows_read:,} rows read, "
             f"{r.cells_written:,} cells written; stopped: {r.stopped_because}"]
    for s in r.last.ships if r.last else ():
        if s.error:
            lines.append(f"  FAILED {s.ship_id}: {s.error}")
            continue
        lines.append(f"  {s.ship_id}: window {s.window_start} .. {s.window_end}, {s.rows_read:,} rows, "
                     f"watermark {s.watermark}, lag {_lag(s.lag_seconds)}"
                     + (f", {s.late_hours} late hour(s)" if s.late_hours else "")
                     + (f", {s.ahead_rows:,} row(s) ahead of database time" if s.ahead_rows else ""))
    return "\n".join(lines)


def _strategy(r) -> str:
    lines = [f"{r.strategy}: ran {r.seconds:,.1f} s, stopped: {r.stopped_because}"]
    if r.backfill is not None:
        lines.append(f"  backfill {'complete' if r.backfill_complete else 'not complete (run the same command again)'}"
                     f": {r.backfill.rows_read:,} rows in {r.backfill.seconds:,.1f} s "
                     f"({r.backfill.rows_per_second:,.0f} rows/s)")
        for ship, start, end, err in r.backfill.failed_chunks:
            lines.append(f"  FAILED {ship} {start} .. {end}: {err}")
        if any(r.backfill.held_seconds.values()):
            lines.append("  backfill held: " + _held(r.backfill.held_seconds))
    if r.stream_rows:
        lines.append(f"  streamed {r.stream_rows:,} rows")
    if r.stream_failures:
        lines.append(f"  {r.stream_failures} failed step(s), each retried (see the log)")
    if r.realtime is not None:
        lines.append("  " + _realtime(r.realtime).replace("\n", "\n  "))
    lines.append("Next: python main.py --mode status, then python main.py --mode validate")
    return "\n".join(lines)


def _demo(r) -> str:
    if not hasattr(r, "steps"):
        return _seed(r)
    lines = [_seed(r.seed), f"A live writer inserted {r.live_rows:,} rows while the steps ran:"]
    lines += [f"  {name}: {seconds:,.1f} s" for name, seconds in r.steps]
    lines += ["", _strategy(r.strategy).rsplit("\n", 1)[0], "", _status(r.status), "", _validate(r.validation), "",
              f"Demo finished in {r.seconds:,.1f} s.",
              "Try next: python main.py --mode status; python main.py --mode realtime --interval 0.25; "
              "python main.py --mode validate; see README.md for the methods and their guarantees."]
    return "\n".join(lines)


RENDERERS: dict[str, Callable[[object], str]] = {
    "demo": _demo,
    "schema-only": _schema,
    "tables-only": _tables,
    "migration-only": _backfill,
    "status": _status,
    "validate": _validate,
    "realtime": _realtime,
    "concurrent": _strategy,
    "hybrid": _strategy,
    "streaming": _strategy,
    "dry-run": _plan,
    "pause": _pause,
    "resume": _resume,
}


def render(mode: str, result: object) -> str:
    """Text for ``result`` of ``mode``; falls back to ``str``."""
    renderer = RENDERERS.get(mode)
    return renderer(result) if renderer else str(result)
