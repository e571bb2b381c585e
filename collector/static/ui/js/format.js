// Formatting of times, durations and values for tables and legends.

/** "2026-11-30 04:05:06" in local time, from epoch ms. */
export function dateTime(ms) {
  if (ms == null) return "";
  const d = new Date(ms);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** "1h 02m", "3.2s" from milliseconds; ``decimals``: of seconds under a minute. */
export function duration(ms, decimals = 1) {
  if (ms == null || ms < 0) return "";
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(decimals)}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(Math.floor(s % 60)).padStart(2, "0")}s`;
  const hh = Math.floor(m / 60);
  if (hh < 48) return `${hh}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(hh / 24)}d ${hh % 24}h`;
}

/** The decimals of seconds that tell ticks ``incr`` seconds apart (0 to 3). */
export function decimalsFor(incr) {
  if (!(incr > 0)) return 1;
  return Math.min(3, Math.max(0, Math.ceil(-Math.log10(incr) - 1e-9)));
}

/** How long a run took (or has been running). */
export function runDuration(info) {
  if (!info.start_time) return "";
  return duration((info.end_time ?? Date.now()) - info.start_time);
}

/** A metric value: null is NaN (JSON has no NaN), else up to 6 significant digits
 * (49999.5 stays 49999.5, not 50000: a rounded value must not read as another one). */
export function num(v) {
  if (v == null) return "NaN";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v) && Math.abs(v) < 1e15) return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3);
  return String(Number(v.toPrecision(6)));
}

/** "3 minutes ago" style relative time from epoch ms. */
export function ago(ms) {
  if (ms == null) return "";
  const s = (Date.now() - ms) / 1000;
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} days ago`;
}
