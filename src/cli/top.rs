//! `gov top`: the caller's gates live, as systemd-cgtop or htop show
//! cgroups and processes. Each second (less often when the listing is slow)
//! it asks for the listing `gov ps` uses (one `list`: the daemon filters it
//! by the caller's credentials, so an unprivileged user sees their own
//! gates); a key acts on the selected gate through the same requests as
//! `gov touch/freeze/thaw/pin/kill`, and the listing is asked for again.
//!
//! What is drawn is a pure function of a [`Screen`] (the gates, the order,
//! the selection, the line at the bottom), tested on ratatui's TestBackend;
//! what a key does is [`App::key`], tested without a terminal. The loop
//! between them only lists, draws and waits for a key or the next second.
//!
//! Freed memory comes from the daemon's events (`removed` and `hibernated`
//! carry `freed_bytes`): read once at the start and again only when a gate
//! left the listing or was hibernated, so a quiet second costs the daemon
//! one `list` and nothing else.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use crossterm::event::{self, Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Paragraph, Row, Table, TableState};
use ratatui::Frame;

use super::{
    cpu_rate, format_columns, human_bytes, human_secs, mem_cell, next_text, state_cell, Backend,
};
use crate::protocol::{EventKind, GateInfo, GateState, Request, Response};

/// How often the listing is asked for.
const REFRESH: Duration = Duration::from_secs(1);

/// The pause before the next listing: a second, or four times what the
/// last one took. A `list` of thousands of gates takes the daemon most of a
/// second (docs/BENCHMARKS.md), during which it serves no one else; top
/// must not keep it that busy.
fn pause_after(took: Duration) -> Duration {
    REFRESH.max(took * 4)
}

/// The order of the gates, largest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Memory,
    Cpu,
    Idle,
}

impl Sort {
    /// From `--sort` (clap has checked the word).
    pub fn parse(word: &str) -> Sort {
        match word {
            "cpu" => Sort::Cpu,
            "idle" => Sort::Idle,
            _ => Sort::Memory,
        }
    }

    fn column(self) -> &'static str {
        match self {
            Sort::Memory => "MEM",
            Sort::Cpu => "CPU",
            Sort::Idle => "IDLE",
        }
    }
}

/// The gates in `sort` order, largest first; ties by project, session, id,
/// so equal rows keep their place from one second to the next.
pub fn sorted(gates: &[GateInfo], sort: Sort) -> Vec<&GateInfo> {
    let mut out: Vec<&GateInfo> = gates.iter().collect();
    let key = |g: &GateInfo| -> f64 {
        match sort {
            Sort::Memory => g.memory_bytes as f64,
            // The rate where the daemon has one, else the total.
            Sort::Cpu => g.cpu_percent.unwrap_or(g.cpu_usec as f64 / 1e6),
            Sort::Idle => g.idle_s as f64,
        }
    };
    out.sort_by(|a, b| {
        key(b)
            .total_cmp(&key(a))
            .then_with(|| (&a.project, &a.session, &a.id).cmp(&(&b.project, &b.session, &b.id)))
    });
    out
}

/// Memory freed by gov as far as the daemon's event history reaches: gates
/// it removed (their memory when it stopped them) and hibernated (their RAM,
/// now an image on disk). None without a daemon.
pub fn freed(events: &[crate::protocol::Event]) -> (usize, u64) {
    events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Removed | EventKind::Hibernated))
        .filter_map(|e| e.freed_bytes)
        .fold((0, 0), |(n, b), f| (n + 1, b + f))
}

/// The line above the table: what gov holds now and what it has freed.
pub fn summary(gates: &[GateInfo], freed: Option<(usize, u64)>) -> String {
    let held = |states: &[GateState]| -> (usize, u64) {
        gates
            .iter()
            .filter(|g| states.contains(&g.state))
            .fold((0, 0), |(n, b), g| (n + 1, b + g.memory_bytes))
    };
    let (run_n, run_b) = held(&[
        GateState::Running,
        GateState::Stopping,
        GateState::Killing,
        GateState::Exited,
    ]);
    let (sus_n, sus_b) = held(&[GateState::Suspended, GateState::Frozen]);
    let (hib_n, hib_b) = held(&[GateState::Hibernated]);
    let mut s = format!(
        "{} gates, {}: {run_n} running {}, {sus_n} suspended or frozen {}, {hib_n} hibernated {} on disk",
        gates.len(),
        human_bytes(run_b + sus_b),
        human_bytes(run_b),
        human_bytes(sus_b),
        human_bytes(hib_b),
    );
    match freed {
        Some((n, b)) => s.push_str(&format!(" | freed {} ({n} gates)", human_bytes(b))),
        None => s.push_str(" | freed: unknown without a daemon"),
    }
    s
}

const HEADER: [&str; 10] = [
    "GATE", "PROJECT", "SESSION", "USER", "PIDS", "MEM", "CPU", "IDLE", "STATE", "NEXT",
];

/// One gate as the table shows it, in HEADER's order.
fn cells(g: &GateInfo, now_ms: u64) -> Vec<String> {
    vec![
        g.id.clone(),
        g.project.clone(),
        g.session.clone(),
        g.user.clone(),
        g.pids.len().to_string(),
        mem_cell(&[g]),
        cpu_rate(g.cpu_percent),
        human_secs(g.idle_s),
        state_cell(g),
        g.next
            .as_ref()
            .map(|n| next_text(n, now_ms))
            .unwrap_or_default(),
    ]
}

/// The plain snapshot, for a pipe or `--once`: the summary line, then the
/// table (in `sort` order).
pub fn render_plain(
    gates: &[GateInfo],
    sort: Sort,
    freed: Option<(usize, u64)>,
    now_ms: u64,
) -> String {
    let mut out = summary(gates, freed) + "\n";
    if gates.is_empty() {
        out.push_str("no gates\n");
        return out;
    }
    let mut rows = vec![HEADER.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    rows.extend(sorted(gates, sort).into_iter().map(|g| cells(g, now_ms)));
    out.push_str(&format_columns(&rows));
    out
}

/// Everything the live view draws.
pub struct Screen<'a> {
    pub gates: &'a [GateInfo],
    pub sort: Sort,
    /// The selected gate's id.
    pub selected: Option<&'a str>,
    pub freed: Option<(usize, u64)>,
    /// The bottom line: a question, an answer, or the keys.
    pub message: Option<&'a str>,
    pub now_ms: u64,
}

const KEYS: &str =
    "j/k select  m/c/i sort by mem/cpu/idle  t touch  f freeze  u thaw  p pin  K kill  q quit";

/// Draws the screen: the summary, the table with the selected row
/// highlighted, the bottom line.
pub fn draw(frame: &mut Frame, s: &Screen) {
    let [top, table_area, bottom] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(summary(s.gates, s.freed)), top);

    let rows = sorted(s.gates, s.sort);
    let body: Vec<Vec<String>> = rows.iter().map(|g| cells(g, s.now_ms)).collect();
    // Each column as wide as its widest cell, as `gov ps` lays them out.
    let widths: Vec<Constraint> = (0..HEADER.len())
        .map(|c| {
            let w = body
                .iter()
                .map(|r| r[c].chars().count())
                .chain([HEADER[c].len() + 1])
                .max()
                .unwrap_or(0);
            Constraint::Length(w as u16)
        })
        .collect();
    let header = Row::new(HEADER.iter().map(|h| {
        if *h == s.sort.column() {
            format!("{h}v")
        } else {
            h.to_string()
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD));
    let table = Table::new(body.into_iter().map(Row::new), widths)
        .header(header)
        .column_spacing(2)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = TableState::new().with_selected(
        s.selected
            .and_then(|id| rows.iter().position(|g| g.id == id)),
    );
    frame.render_stateful_widget(table, table_area, &mut state);

    let line = match (s.message, s.gates.is_empty()) {
        (Some(m), _) => Line::from(m.to_string()).style(Style::new().add_modifier(Modifier::BOLD)),
        (None, true) => Line::from(format!("no gates   {KEYS}")),
        (None, false) => Line::from(KEYS),
    };
    frame.render_widget(Paragraph::new(line), bottom);
}

/// What a key asks the loop to do.
#[derive(Debug, PartialEq)]
pub enum Command {
    Quit,
    /// Send this request; `what` says it in the bottom line ("froze g1").
    Act {
        request: Request,
        what: String,
    },
    /// Nothing to send: redraw.
    Redraw,
}

/// The live view's state: the last listing and what the person chose.
pub struct App {
    pub gates: Vec<GateInfo>,
    pub sort: Sort,
    pub selected: Option<String>,
    pub message: Option<String>,
    /// A kill asked for, awaiting y.
    pub confirm: Option<String>,
    pub freed: Option<(usize, u64)>,
}

impl App {
    pub fn new(sort: Sort) -> App {
        App {
            gates: Vec::new(),
            sort,
            selected: None,
            message: None,
            confirm: None,
            freed: None,
        }
    }

    /// A new listing. The selection follows its gate; when that gate is
    /// gone, the row at its place is selected instead.
    pub fn update(&mut self, gates: Vec<GateInfo>) {
        let old = sorted(&self.gates, self.sort);
        let at = self
            .selected
            .as_ref()
            .and_then(|id| old.iter().position(|g| &g.id == id))
            .unwrap_or(0);
        self.gates = gates;
        let new = sorted(&self.gates, self.sort);
        let still_there = self
            .selected
            .as_ref()
            .is_some_and(|id| new.iter().any(|g| &g.id == id));
        if !still_there {
            self.selected = new
                .get(at.min(new.len().saturating_sub(1)))
                .map(|g| g.id.clone());
        }
    }

    fn selected_gate(&self) -> Option<&GateInfo> {
        let id = self.selected.as_ref()?;
        self.gates.iter().find(|g| &g.id == id)
    }

    fn move_selection(&mut self, down: bool) {
        let rows = sorted(&self.gates, self.sort);
        let at = self
            .selected
            .as_ref()
            .and_then(|id| rows.iter().position(|g| &g.id == id));
        let to = match (at, down) {
            (None, _) => 0,
            (Some(i), true) => (i + 1).min(rows.len().saturating_sub(1)),
            (Some(i), false) => i.saturating_sub(1),
        };
        self.selected = rows.get(to).map(|g| g.id.clone());
    }

    /// What a key does. A kill is asked about first; any key but y answers no.
    pub fn key(&mut self, key: KeyEvent) -> Command {
        if let Some(gate) = self.confirm.take() {
            if key.code == KeyCode::Char('y') {
                return Command::Act {
                    what: format!("killed {gate}"),
                    request: Request::Kill { gate },
                };
            }
            self.message = Some(format!("not killed: {gate}"));
            return Command::Redraw;
        }
        self.message = None;
        let ctrl_c =
            key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Command::Quit,
            _ if ctrl_c => return Command::Quit,
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(true),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(false),
            KeyCode::Char('m') => self.sort = Sort::Memory,
            KeyCode::Char('c') => self.sort = Sort::Cpu,
            KeyCode::Char('i') => self.sort = Sort::Idle,
            KeyCode::Char(c @ ('t' | 'f' | 'u' | 'p' | 'K')) => {
                let Some(g) = self.selected_gate() else {
                    self.message = Some("no gate selected".into());
                    return Command::Redraw;
                };
                let gate = g.id.clone();
                let (request, what) = match c {
                    't' => (
                        Request::Touch {
                            gate: Some(gate.clone()),
                            session: None,
                        },
                        "touched",
                    ),
                    'f' => (Request::Freeze { gate: gate.clone() }, "froze"),
                    'u' => (Request::Thaw { gate: gate.clone() }, "thawed"),
                    'p' if g.pinned => (Request::Unpin { gate: gate.clone() }, "unpinned"),
                    'p' => (Request::Pin { gate: gate.clone() }, "pinned"),
                    _ => {
                        self.message = Some(format!("kill gate {gate}? y/n"));
                        self.confirm = Some(gate);
                        return Command::Redraw;
                    }
                };
                return Command::Act {
                    request,
                    what: format!("{what} {gate}"),
                };
            }
            _ => {}
        }
        Command::Redraw
    }

    fn screen(&self, now_ms: u64) -> Screen<'_> {
        Screen {
            gates: &self.gates,
            sort: self.sort,
            selected: self.selected.as_deref(),
            freed: self.freed,
            message: self.message.as_deref(),
            now_ms,
        }
    }
}

/// `gov top`: live on a terminal, else a plain snapshot each second (or once).
pub fn run(once: bool, sort: Sort) -> Result<i32> {
    let mut source = Source::connect()?;
    if once || !std::io::stdout().is_terminal() {
        loop {
            let started = Instant::now();
            let gates = source.list()?;
            print!(
                "{}",
                render_plain(&gates, sort, source.freed, crate::gate::now_ms())
            );
            if once {
                return Ok(0);
            }
            println!();
            use std::io::Write;
            std::io::stdout().flush()?;
            std::thread::sleep(pause_after(started.elapsed()));
        }
    }
    live(source, sort)
}

/// Set by SIGTERM, SIGINT or SIGHUP: leave the loop and restore the terminal.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// The terminal in raw mode on the alternate screen, given back on drop (an
/// error's return too); ratatui's panic hook gives it back on a panic.
struct Term(ratatui::DefaultTerminal);

impl Drop for Term {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn live(mut source: Source, sort: Sort) -> Result<i32> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    // In raw mode ^C is a key; SIGTERM and SIGHUP still come as signals,
    // and without a handler would end us with the terminal left raw.
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(sig, &action) }?;
    }
    let tty = Tty::open()?;
    let mut term = Term(ratatui::try_init()?);
    let mut app = App::new(sort);
    let mut due = Instant::now();
    while !STOP.load(Ordering::Relaxed) {
        if Instant::now() >= due {
            let started = Instant::now();
            match source.list() {
                Ok(gates) => app.update(gates),
                Err(e) => app.message = Some(format!("{e:#}")),
            }
            app.freed = source.freed;
            due = Instant::now() + pause_after(started.elapsed());
        }
        term.0
            .draw(|f| draw(f, &app.screen(crate::gate::now_ms())))?;
        // Short enough that a signal is seen within a quarter second.
        let wait = due
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        match tty.wait(wait)? {
            Input::Gone => break,
            Input::None => continue,
            Input::Ready => {}
        }
        if !event::poll(Duration::ZERO)? {
            continue;
        }
        let TermEvent::Key(key) = event::read()? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        match app.key(key) {
            Command::Quit => break,
            Command::Redraw => {}
            Command::Act { request, what } => {
                app.message = Some(match source.act(request) {
                    Ok(()) => what,
                    Err(e) => format!("{e:#}"),
                });
                // Show what the action did now, not in up to a second.
                due = Instant::now();
            }
        }
    }
    Ok(0)
}

/// What the terminal has for us.
enum Input {
    None,
    Ready,
    /// Hung up: the terminal went away (its window closed, tmux killed).
    Gone,
}

/// The terminal crossterm reads keys from (stdin if it is one, else
/// /dev/tty), polled by us first: on a hung-up terminal crossterm's own
/// poll spins in a read loop and never returns, not even for a signal, so
/// a closed window left `gov top` burning a core.
struct Tty(std::os::fd::OwnedFd);

impl Tty {
    fn open() -> Result<Tty> {
        use std::os::fd::AsFd;
        let fd = if std::io::stdin().is_terminal() {
            std::io::stdin().as_fd().try_clone_to_owned()?
        } else {
            std::fs::File::open("/dev/tty")?.into()
        };
        Ok(Tty(fd))
    }

    /// Waits up to `wait`; a signal (EINTR) is no input, so the caller
    /// looks at STOP.
    fn wait(&self, wait: Duration) -> Result<Input> {
        use std::os::fd::AsRawFd;
        let mut fd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = wait.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut fd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EINTR) => Ok(Input::None),
                _ => Err(e.into()),
            };
        }
        Ok(
            if fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
                Input::Gone
            } else if fd.revents & libc::POLLIN != 0 {
                Input::Ready
            } else {
                Input::None
            },
        )
    }
}

/// The listing and the freed totals, through one connection, made again
/// when the daemon went away and came back.
struct Source {
    backend: Option<Backend>,
    /// Gates seen in the last listing, and which of them were hibernated:
    /// when one leaves or hibernates, its event says what was freed.
    seen: Vec<(String, bool)>,
    freed: Option<(usize, u64)>,
}

impl Source {
    fn connect() -> Result<Source> {
        let mut s = Source {
            backend: Some(Backend::connect()?),
            seen: Vec::new(),
            freed: None,
        };
        s.read_freed();
        Ok(s)
    }

    fn backend(&mut self) -> Result<&mut Backend> {
        if self.backend.is_none() {
            self.backend = Some(Backend::connect()?);
        }
        Ok(self.backend.as_mut().expect("just connected"))
    }

    fn list(&mut self) -> Result<Vec<GateInfo>> {
        let gates = match self.backend()?.list() {
            Ok(g) => g,
            Err(e) => {
                self.backend = None;
                return Err(e);
            }
        };
        let now: Vec<(String, bool)> = gates
            .iter()
            .map(|g| (g.id.clone(), g.state == GateState::Hibernated))
            .collect();
        // Gone, or hibernated since: an event with freed_bytes is new.
        let changed =
            self.seen.iter().any(
                |(id, was_hibernated)| match now.iter().find(|(i, _)| i == id) {
                    None => true,
                    Some((_, hibernated)) => *hibernated && !was_hibernated,
                },
            );
        self.seen = now;
        if changed {
            self.read_freed();
        }
        Ok(gates)
    }

    /// One `events` request; without a daemon there are none.
    fn read_freed(&mut self) {
        let Ok(Backend::Daemon(c)) = self.backend() else {
            return;
        };
        if let Ok(Response::Events { events }) = c.call(Request::Events { limit: None }) {
            self.freed = Some(freed(&events));
        }
    }

    fn act(&mut self, request: Request) -> Result<()> {
        let r = self.backend()?.act(request);
        if r.is_err() {
            // A broken connection is made again at the next listing; an
            // error reply on a good one costs one reconnect.
            self.backend = None;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::tests::gate;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn g(id: &str, mem: u64, cpu: f64, idle: u64) -> GateInfo {
        GateInfo {
            id: id.into(),
            cpu_percent: Some(cpu),
            ..gate("s1", "/p", mem, idle)
        }
    }

    fn screen_text(s: &Screen) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(130, 8)).unwrap();
        t.draw(|f| draw(f, s)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect()
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    #[test]
    fn the_table_is_in_the_chosen_order_largest_first() {
        let gates = [
            g("ga", 10 << 20, 5.0, 30),
            g("gb", 30 << 20, 1.0, 10),
            g("gc", 20 << 20, 9.0, 20),
        ];
        let ids = |s| {
            sorted(&gates, s)
                .iter()
                .map(|g| g.id.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(Sort::Memory), ["gb", "gc", "ga"]);
        assert_eq!(ids(Sort::Cpu), ["gc", "ga", "gb"]);
        assert_eq!(ids(Sort::Idle), ["ga", "gc", "gb"]);
        let lines = screen_text(&Screen {
            gates: &gates,
            sort: Sort::Cpu,
            selected: Some("ga"),
            freed: Some((2, 5 << 20)),
            message: None,
            now_ms: 0,
        });
        assert!(
            lines[0].starts_with("3 gates, 60M: 3 running 60M"),
            "{lines:#?}"
        );
        assert!(lines[0].contains("freed 5.0M (2 gates)"), "{lines:#?}");
        assert!(lines[1].contains("CPUv"), "{lines:#?}");
        let rows: Vec<&String> = lines[2..5].iter().collect();
        assert!(
            rows[0].contains("gc") && rows[0].contains("9%"),
            "{lines:#?}"
        );
        assert!(
            rows[1].starts_with("> ga"),
            "the selected row is marked: {lines:#?}"
        );
        assert!(rows[2].contains("gb"), "{lines:#?}");
        assert!(lines[7].contains("K kill"), "{lines:#?}");
    }

    #[test]
    fn kill_asks_first_and_only_y_kills() {
        let mut app = App::new(Sort::Memory);
        app.update(vec![g("ga", 1, 0.0, 0), g("gb", 2, 0.0, 0)]);
        assert_eq!(app.selected.as_deref(), Some("gb"));
        assert_eq!(app.key(key('j')), Command::Redraw);
        assert_eq!(app.selected.as_deref(), Some("ga"));
        assert_eq!(app.key(key('K')), Command::Redraw);
        assert_eq!(app.message.as_deref(), Some("kill gate ga? y/n"));
        let lines = screen_text(&app.screen(0));
        assert!(lines[7].contains("kill gate ga? y/n"), "{lines:#?}");
        assert_eq!(app.key(key('n')), Command::Redraw);
        assert_eq!(app.message.as_deref(), Some("not killed: ga"));
        app.key(key('K'));
        assert_eq!(
            app.key(key('y')),
            Command::Act {
                request: Request::Kill { gate: "ga".into() },
                what: "killed ga".into()
            }
        );
    }

    #[test]
    fn keys_act_on_the_selected_gate() {
        let mut app = App::new(Sort::Memory);
        app.update(vec![GateInfo {
            pinned: true,
            ..g("ga", 1, 0.0, 0)
        }]);
        let req = |app: &mut App, c| match app.key(key(c)) {
            Command::Act { request, .. } => request,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            req(&mut app, 't'),
            Request::Touch {
                gate: Some("ga".into()),
                session: None
            }
        );
        assert_eq!(req(&mut app, 'f'), Request::Freeze { gate: "ga".into() });
        assert_eq!(req(&mut app, 'u'), Request::Thaw { gate: "ga".into() });
        assert_eq!(req(&mut app, 'p'), Request::Unpin { gate: "ga".into() });
        assert_eq!(app.key(key('q')), Command::Quit);
        assert_eq!(
            app.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Command::Quit
        );
        app.update(Vec::new());
        assert_eq!(app.key(key('f')), Command::Redraw);
        assert_eq!(app.message.as_deref(), Some("no gate selected"));
    }

    #[test]
    fn the_selection_follows_its_gate_and_moves_on_when_it_goes() {
        let mut app = App::new(Sort::Memory);
        app.update(vec![
            g("ga", 3, 0.0, 0),
            g("gb", 2, 0.0, 0),
            g("gc", 1, 0.0, 0),
        ]);
        app.key(key('j'));
        assert_eq!(app.selected.as_deref(), Some("gb"));
        // gb grows past ga: still selected.
        app.update(vec![
            g("ga", 3, 0.0, 0),
            g("gb", 9, 0.0, 0),
            g("gc", 1, 0.0, 0),
        ]);
        assert_eq!(app.selected.as_deref(), Some("gb"));
        app.update(vec![g("ga", 3, 0.0, 0), g("gc", 1, 0.0, 0)]);
        assert_eq!(app.selected.as_deref(), Some("ga"));
    }

    #[test]
    fn the_plain_snapshot_has_the_summary_and_the_table() {
        let gates = [
            GateInfo {
                state: GateState::Hibernated,
                ..g("ga", 100 << 20, 0.0, 50)
            },
            GateInfo {
                state: GateState::Suspended,
                next: Some(crate::protocol::Next {
                    action: crate::protocol::NextAction::StopFrozenTooLong,
                    at_ms: 61_000,
                }),
                ..g("gb", 2 << 20, 0.0, 5)
            },
        ];
        let text = render_plain(&gates, Sort::Idle, None, 0);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "2 gates, 2.0M: 0 running 0B, 1 suspended or frozen 2.0M, 1 hibernated 100M on disk \
             | freed: unknown without a daemon"
        );
        assert!(lines[1].starts_with("GATE"), "{text}");
        assert!(lines[2].starts_with("ga"), "{text}");
        assert!(
            lines[3].contains("stop: frozen too long in 1m01s"),
            "{text}"
        );
        assert_eq!(
            render_plain(&[], Sort::Memory, Some((0, 0)), 0)
                .lines()
                .nth(1),
            Some("no gates")
        );
    }

    #[test]
    fn a_slow_listing_is_asked_for_less_often() {
        assert_eq!(pause_after(Duration::from_millis(5)), REFRESH);
        assert_eq!(
            pause_after(Duration::from_millis(900)),
            Duration::from_millis(3600)
        );
    }

    #[test]
    fn freed_counts_removals_and_hibernations_only() {
        let ev = |kind, freed| crate::protocol::Event {
            time_ms: 0,
            gate: "g".into(),
            project: "/p".into(),
            session: "s".into(),
            uid: 0,
            kind,
            reason: None,
            freed_bytes: freed,
        };
        let events = [
            ev(EventKind::Removed, Some(10)),
            ev(EventKind::Hibernated, Some(5)),
            ev(EventKind::Spawned, None),
            ev(EventKind::Exited, None),
        ];
        assert_eq!(freed(&events), (2, 15));
    }
}
