//! Progress on stderr that adapts to where it goes: bars on a terminal, plain lines in
//! logs, and JSON-lines events (`--json-events`) for CI.
//!
//! Configure once with [`configure`]; then [`stage`] times a named stage and [`bytes`]
//! tracks a byte stream (download, pack, push).

use std::io::{IsTerminal, Write};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, Default)]
struct Mode {
    json: bool,
    quiet: bool,
    tty: bool,
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Sets the output mode for the whole process (first call wins).
pub fn configure(json: bool, quiet: bool) {
    let _ = MODE.set(Mode {
        json,
        quiet,
        tty: std::io::stderr().is_terminal(),
    });
}

fn mode() -> Mode {
    *MODE.get().unwrap_or(&Mode {
        json: false,
        quiet: false,
        tty: false,
    })
}

/// The version of the event stream's format (the `v` field of every event); bumped
/// when a field changes meaning or disappears (docs/events.md).
pub const EVENTS_VERSION: u32 = 1;

thread_local! {
    /// The recipe and the build step this thread works on, added to its events.
    static CONTEXT: std::cell::RefCell<(Option<String>, Option<String>)> =
        const { std::cell::RefCell::new((None, None)) };
}

/// Whether human lines name their recipe (several recipes build at once).
static LABEL_BY_RECIPE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Starts (or stops) putting `[NAME] ` before every human line, bar and log line a
/// recipe's thread prints, so that lines of recipes built side by side (`--jobs`) say
/// which recipe they belong to.
pub fn label_by_recipe(on: bool) {
    LABEL_BY_RECIPE.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// `[NAME] ` for a line printed by a thread building recipe NAME while several build,
/// else nothing.
pub fn line_prefix() -> String {
    if !LABEL_BY_RECIPE.load(std::sync::atomic::Ordering::Relaxed) {
        return String::new();
    }
    CONTEXT.with(|c| {
        c.borrow()
            .0
            .as_deref()
            .map(|r| {
                let p = std::path::Path::new(r);
                let name = p.file_stem().unwrap_or(p.as_os_str()).to_string_lossy();
                format!("[{name}] ")
            })
            .unwrap_or_default()
    })
}

/// `text` with [`line_prefix`] before each of its lines.
pub fn prefixed(text: &str) -> String {
    let prefix = line_prefix();
    if prefix.is_empty() {
        return text.to_string();
    }
    text.split_inclusive('\n')
        .map(|l| format!("{prefix}{l}"))
        .collect()
}

/// `text` with every line longer than `width` columns broken at spaces; a continued
/// line keeps the first line's indentation plus four spaces. Words longer than a line
/// (URLs, paths) stay whole. ANSI colour sequences take no columns.
pub fn wrap(text: &str, width: usize) -> String {
    fn columns(s: &str) -> usize {
        let mut n = 0;
        let mut in_escape = false;
        for c in s.chars() {
            match (in_escape, c) {
                (false, '\u{1b}') => in_escape = true,
                (true, c) if c.is_ascii_alphabetic() => in_escape = false,
                (true, _) => {}
                (false, _) => n += 1,
            }
        }
        n
    }
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        let (body, newline) = match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        };
        if columns(body) <= width {
            out.push_str(line);
            continue;
        }
        let indent: String = body.chars().take_while(|c| *c == ' ').collect();
        let hanging = format!("{indent}    ");
        let mut current = String::new();
        for word in body[indent.len()..].split(' ') {
            if current.is_empty() {
                current = format!("{indent}{word}");
            } else if columns(&current) + 1 + columns(word) <= width {
                current.push(' ');
                current.push_str(word);
            } else {
                out.push_str(current.trim_end());
                out.push('\n');
                current = format!("{hanging}{word}");
            }
        }
        out.push_str(&current);
        out.push_str(newline);
    }
    out
}

/// The terminal's width when stderr is one (for [`wrap`]).
pub fn stderr_width() -> Option<usize> {
    terminal_size::terminal_size_of(std::io::stderr())
        .map(|(w, _)| w.0 as usize)
        .filter(|w| *w >= 20)
}

/// Sets the recipe this thread builds (events carry it as `recipe`).
pub fn set_recipe(recipe: Option<String>) {
    CONTEXT.with(|c| c.borrow_mut().0 = recipe);
}

/// Sets the build step this thread runs (events carry it as `step`); returns the
/// previous one.
pub fn set_step(step: Option<String>) -> Option<String> {
    CONTEXT.with(|c| std::mem::replace(&mut c.borrow_mut().1, step))
}

/// The recipe and step this thread works on, to carry over to a thread it starts.
pub fn context() -> (Option<String>, Option<String>) {
    CONTEXT.with(|c| c.borrow().clone())
}

/// Whether JSON events are on.
pub fn json_events() -> bool {
    mode().json
}

/// Writes one JSON-lines event to stderr when events are on.
pub fn event(kind: &str, fields: Value) {
    if !mode().json {
        return;
    }
    let mut obj =
        json!({ "v": EVENTS_VERSION, "event": kind, "time": chrono::Utc::now().to_rfc3339() });
    if let Some(o) = obj.as_object_mut() {
        CONTEXT.with(|c| {
            let c = c.borrow();
            if let Some(r) = &c.0 {
                o.insert("recipe".into(), json!(r));
            }
            if let Some(s) = &c.1 {
                o.entry("step").or_insert(json!(s));
            }
        });
        if let Value::Object(f) = fields {
            o.extend(f);
        }
    }
    let line = crate::redact::apply(&obj.to_string(), &[]);
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// A human line on stderr (suppressed by `-q` and in JSON mode).
pub fn say(msg: impl AsRef<str>) {
    let m = mode();
    if m.quiet || m.json {
        return;
    }
    eprintln!("{}", prefixed(&crate::redact::apply(msg.as_ref(), &[])));
}

/// A timed stage. Call [`Stage::done`] on success; dropping it unfinished reports failure.
#[must_use = "a stage reports its time when done() is called"]
pub struct Stage {
    name: String,
    started: Instant,
    finished: bool,
}

/// Starts a stage: prints what it does and, when done, how long it took.
pub fn stage(name: &str, description: impl AsRef<str>) -> Stage {
    say(format!("==> {name}: {}", description.as_ref()));
    event(
        "stage-start",
        json!({ "stage": name, "description": description.as_ref() }),
    );
    Stage {
        name: name.to_string(),
        started: Instant::now(),
        finished: false,
    }
}

impl Stage {
    /// Marks the stage successful and returns its duration.
    pub fn done(mut self) -> Duration {
        self.finished = true;
        let elapsed = self.started.elapsed();
        say(format!(
            "    {} done in {}",
            self.name,
            format_duration(elapsed)
        ));
        event(
            "stage-done",
            json!({ "stage": self.name, "seconds": elapsed.as_secs_f64() }),
        );
        elapsed
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        if !self.finished {
            event(
                "stage-failed",
                json!({ "stage": self.name, "seconds": self.started.elapsed().as_secs_f64() }),
            );
        }
    }
}

/// Progress of a byte stream.
pub struct Bytes {
    label: String,
    total: Option<u64>,
    done: u64,
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Instant,
}

/// Starts tracking `total` bytes (unknown when `None`).
pub fn bytes(label: &str, total: Option<u64>) -> Bytes {
    let m = mode();
    let bar = (m.tty && !m.quiet && !m.json).then(|| {
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template(
                "    {msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(format!("{}{label}", line_prefix()));
        bar
    });
    Bytes {
        label: label.to_string(),
        total,
        done: 0,
        bar,
        started: Instant::now(),
        last_line: Instant::now(),
    }
}

/// Tracks bytes without drawing or printing anything while they move (for a transfer
/// that runs beside another one's bar); only the closing `progress-done` event is sent.
pub fn silent_bytes(label: &str) -> Bytes {
    Bytes {
        label: label.to_string(),
        total: None,
        done: 0,
        bar: Some(ProgressBar::hidden()),
        started: Instant::now(),
        last_line: Instant::now(),
    }
}

impl Bytes {
    pub fn inc(&mut self, n: u64) {
        self.done += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
            return;
        }
        if self.last_line.elapsed() >= Duration::from_secs(10) {
            self.last_line = Instant::now();
            let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            let pct = self
                .total
                .map(|t| format!(" ({:.0}%)", self.done as f64 * 100.0 / t.max(1) as f64))
                .unwrap_or_default();
            say(format!(
                "    {}: {}{pct} at {}/s",
                self.label,
                human_bytes(self.done),
                human_bytes(rate as u64)
            ));
            event(
                "progress",
                json!({ "what": self.label, "bytes": self.done, "total": self.total }),
            );
        }
    }

    /// Sets the position (e.g. when a download resumes part-way).
    pub fn set_position(&mut self, pos: u64) {
        self.done = pos;
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
    }

    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        event(
            "progress-done",
            json!({ "what": self.label, "bytes": self.done,
                    "seconds": self.started.elapsed().as_secs_f64() }),
        );
    }
}

/// `1.5 GiB`, `300 MiB`, `12 KiB`, `10 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `850ms`, `12.3s`, `2m05s`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 1.0 {
        format!("{}ms", d.as_millis())
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_a_recipe_built_beside_others_carry_its_name() {
        // Only this thread has a recipe, so other tests' lines stay as they are.
        set_recipe(Some("recipes/lab-web.yaml".into()));
        label_by_recipe(false);
        assert_eq!(prefixed("pack done"), "pack done");
        label_by_recipe(true);
        assert_eq!(
            prefixed("warning: slow\n  because TCG\n"),
            "[lab-web] warning: slow\n[lab-web]   because TCG\n"
        );
        set_recipe(None);
        assert_eq!(prefixed("no recipe"), "no recipe");
    }

    #[test]
    fn long_lines_wrap_with_a_hanging_indent() {
        let w = wrap(
            " WARN KVM is not usable (no /dev/kvm); falling back to TCG emulation\nshort\n",
            30,
        );
        assert_eq!(
            w,
            " WARN KVM is not usable (no\n     /dev/kvm); falling back\n     to TCG emulation\nshort\n"
        );
        for l in w.lines() {
            assert!(l.chars().count() <= 30, "{l:?}");
        }
        // A word longer than the line stays whole; colour codes take no columns.
        let url = "https://example.org/a/very/long/path/to/a/base-image.qcow2";
        assert_eq!(wrap(url, 20), url);
        let red = "\u{1b}[31mWARN\u{1b}[0m ok";
        assert_eq!(wrap(red, 7), red);
    }

    #[test]
    fn formats() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
    }
}
