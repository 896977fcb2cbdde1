//! The terminal the client reads its input from: prompts, line editing,
//! a password read without echo, and events printed above the line being
//! typed.
//!
//! # The seam with the rest of the client
//!
//! The poll loop sees only this: [`start`] (instead of a plain reader
//! thread when standard input is a terminal), then
//! - [`Console::prompt`]: "read the next line, showing this prompt, with
//!   or without echo"; the line comes back as a [`StdinEvent`] on the
//!   receiver [`start`] returned, like lines from a pipe do;
//! - [`Console::print`]: "print these lines above the prompt";
//! - [`Console::note_names`]: "these user names were seen" (for Tab);
//! - [`Console::finish`]: "the session is over: erase the prompt and put
//!   the terminal back as it was".
//!
//! # How
//!
//! When standard input and output are both a terminal rustyline can drive,
//! a command or username line is read by rustyline in the reader thread
//! (the thread exists because reading a terminal blocks; see
//! [`super::stdin`]): history for the session (Up/Down), cursor keys,
//! Home/End/Delete, Ctrl-A/E/K/U/W/L and Tab completion of commands and of
//! the user names the client has seen. A password is never read by
//! rustyline: rustyline always shows something for each typed character
//! (at best blanks, which give the length away), so [`read_password`]
//! reads it key by key with echo off, handling Backspace, Ctrl-U, Ctrl-C,
//! Ctrl-D and Ctrl-Z, and skipping the escape sequences of cursor keys.
//!
//! Lines printed while rustyline is editing wait in a queue. A helper
//! thread nudges rustyline through its external printer with a message
//! that moves the cursor up one row and back down; rustyline clears the
//! prompt and the typed line (all of their rows), writes that, and redraws:
//! the queued lines are handed out in that redraw, before the prompt (see
//! [`ChatHelper::highlight_prompt`]). Every line is taken from the queue
//! exactly once, whether a nudge or the user's own typing redraws first,
//! so none is lost or doubled when rustyline stops between the two, and
//! the poll loop never waits for the terminal. (One flaw: on the screen's
//! top row, after Ctrl-L, the cursor cannot move up, and the first line
//! printed then leaves a blank row above it.)
//!
//! Between two lines (while a login is checked, say) the terminal keeps
//! keys as typed and unechoed, signals on, for the next `readline`. After
//! the client was stopped and continued (Ctrl-Z and `fg`), a small thread
//! woken by SIGCONT puts the reader's terminal settings back and has the
//! prompt and the line drawn again: the shell had the terminal meanwhile.
//!
//! rustyline has no way to end a `readline` from another thread. While it
//! reads, it catches SIGINT itself and returns as for Ctrl-C, so
//! [`Console::finish`] sends SIGINT to the reader thread until it returns;
//! then the prompt and the typed line are erased, using rustyline's own
//! character widths to count their rows. Ctrl-C typed by the user ends
//! `readline` the same way; the reader then sends SIGINT to the process,
//! which the poll loop handles as before.
//!
//! When standard input is a terminal but standard output is not (`| tee
//! log`), or the terminal is one rustyline cannot drive (`TERM=dumb`),
//! lines are read as the terminal's line discipline gives them, and the
//! password is still read key by key without echo; its prompt then goes to
//! the terminal (`/dev/tty`), never to standard output.
//!
//! Not here: what a line means, when to ask for one, and what to print
//! (the session decides), and input that is not a terminal (read by
//! [`super::stdin`] exactly as before).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::Waker;
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{
    ColorMode, CompletionType, Config, Context, Editor, ExternalPrinter, GraphemeClusterMode,
    Helper,
};
use unicode_segmentation::UnicodeSegmentation;

use super::event::{Event, Field};
use super::render;
use super::stdin::{self, deliver, StdinEvent};
use super::terminal::{self, Settings};
use crate::protocol::{valid_name, Line, LineBuffer, MAX_LINE};

/// The commands Tab completes as the first word: those `help` lists.
fn commands() -> impl Iterator<Item = &'static str> {
    super::command::HELP.iter().filter_map(|line| line.split_whitespace().next())
}

/// The commands whose second word is a user name, completed by Tab.
const USER_COMMANDS: &[&str] = &["block", "consent", "getaddress", "message", "private", "unblock"];

/// Most user names kept for completion; names seen after that are not kept.
pub const MAX_NAMES: usize = 1000;

/// Most command lines kept in the session's history (Up/Down).
pub const HISTORY: usize = 500;

/// Most bytes of lines waiting to be printed above the prompt; past this,
/// printing waits until rustyline redraws (it only does not while the
/// user answers a completion question).
const MAX_PENDING: usize = 1 << 20;

/// What the nudge through rustyline's external printer writes: up one row
/// and back down, so the cursor ends where it started. (rustyline adds no
/// newline of its own after a message that ends with one, and while not
/// editing it writes the message as it is: the same no-op.)
const NUDGE: &str = "\x1b[A\n";

/// How long [`Console::finish`] waits for `readline` to return, and how
/// often it sends SIGINT meanwhile.
const STOP_WAIT: Duration = Duration::from_secs(1);
const STOP_RETRY: Duration = Duration::from_millis(20);

/// How long after ESC the rest of an escape sequence may take to arrive
/// (a lone Esc key press sends nothing more).
const ESCAPE_WAIT_MS: libc::c_int = 50;

/// What the reader thread is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activity {
    /// Not reading, or reading a line the terminal echoes itself.
    Idle,
    /// In rustyline's `readline`.
    Editing,
    /// Reading a password key by key; its prompt is on the screen.
    Password,
}

/// A line the client asked for.
#[derive(Debug, Clone, Copy)]
struct Request {
    prompt: &'static str,
    echo: bool,
}

/// What the poll loop and the reader threads share.
struct State {
    request: Option<Request>,
    activity: Activity,
    /// The prompt rustyline last drew (the history search shows its own),
    /// or the password prompt.
    prompt: String,
    /// The line as rustyline last showed it.
    line: String,
    /// rustyline has drawn the prompt since `readline` began.
    drawn: bool,
    /// The settings the reader keeps the terminal in while it reads keys
    /// (rustyline's, or the password reader's), to put back after the
    /// client was stopped and continued.
    keys: Option<Settings>,
    /// Lines to print above the prompt at rustyline's next redraw.
    pending: String,
    /// A nudge is wanted.
    nudge: bool,
    /// A plain prompt (no editor) is on the screen, unanswered.
    plain_prompt: bool,
    closing: bool,
    names: BTreeSet<String>,
}

impl State {
    fn new() -> State {
        State {
            request: None,
            activity: Activity::Idle,
            prompt: String::new(),
            line: String::new(),
            drawn: false,
            keys: None,
            pending: String::new(),
            nudge: false,
            plain_prompt: false,
            closing: false,
            names: BTreeSet::new(),
        }
    }

    /// Queues `text` to be printed above the prompt at rustyline's next
    /// redraw, and asks for a nudge so that one comes soon.
    fn queue(&mut self, text: &str) {
        self.pending.push_str(text);
        self.pending.push('\n');
        self.nudge = true;
    }

    /// What a redraw writes for the prompt: the queued lines (taken, so
    /// each is written once) and then the prompt.
    fn prompt_shown<'p>(&mut self, prompt: &'p str) -> Cow<'p, str> {
        self.drawn = true;
        if self.prompt != prompt {
            prompt.clone_into(&mut self.prompt);
        }
        if self.pending.is_empty() {
            return Cow::Borrowed(prompt);
        }
        let mut shown = std::mem::take(&mut self.pending);
        shown.push_str(prompt);
        Cow::Owned(shown)
    }
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Standard output is the terminal the prompts are shown on.
    screen: bool,
    /// Prompts are shown at all (interactive mode).
    prompts: bool,
    /// Where the password prompt goes when standard output is not the
    /// terminal.
    tty: Option<File>,
    /// How rustyline measures characters (to count the rows it used).
    widths: GraphemeClusterMode,
    /// The terminal's settings when the client started.
    saved: Settings,
    /// With the editor, the settings between two lines: what is typed
    /// while no line is being read (say while a login is checked) is kept
    /// as typed, unseen, for the next `readline`, instead of being echoed
    /// and line-edited by the terminal.
    between: Option<Settings>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `text` where the password prompt is shown.
    fn to_prompt_screen(&self, text: &str) {
        // Failures to show a prompt are not worth ending input for.
        if self.screen {
            let mut out = io::stdout().lock();
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        } else if let Some(mut tty) = self.tty.as_ref() {
            let _ = tty.write_all(text.as_bytes());
        }
    }
}

/// The console: held by the poll loop (see the module documentation).
pub struct Console {
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    finished: bool,
}

/// Starts reading standard input: with a [`Console`] when it is a
/// terminal, otherwise line by line as [`super::stdin`] does. `interactive`
/// (standard input and output both terminals) asks for prompts and the
/// editor. Events arrive on the receiver; `waker` is woken after each.
pub fn start(
    waker: Arc<Waker>,
    interactive: bool,
) -> io::Result<(Option<Console>, Receiver<StdinEvent>)> {
    if !terminal::is_terminal(libc::STDIN_FILENO) {
        return Ok((None, stdin::spawn(waker)?));
    }
    let saved = Settings::of(libc::STDIN_FILENO)?;
    let widths = GraphemeClusterMode::from_env();
    let mut editor = None;
    let mut printer = None;
    if interactive {
        let config = Config::builder()
            .auto_add_history(false)
            .max_history_size(HISTORY)
            .map_err(io::Error::other)?
            .completion_type(CompletionType::List)
            // Pasted text is typed key by key, so each pasted line ends
            // at its newline as if Enter were pressed.
            .bracketed_paste(false)
            // The queued lines are handed out by the highlighter, which
            // rustyline only calls with colours on; it adds no colour.
            .color_mode(ColorMode::Forced)
            .grapheme_cluster_mode(widths)
            .build();
        let mut ed: Editor<ChatHelper, DefaultHistory> =
            Editor::with_config(config).map_err(io::Error::other)?;
        // No printer means a terminal rustyline cannot drive (TERM=dumb):
        // read plain lines then.
        if let Ok(p) = ed.create_external_printer() {
            printer = Some(p);
            editor = Some(ed);
        }
    }
    let tty = match terminal::is_terminal(libc::STDOUT_FILENO) {
        true => None,
        false => File::options().write(true).open("/dev/tty").ok(),
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(State::new()),
        changed: Condvar::new(),
        screen: terminal::is_terminal(libc::STDOUT_FILENO),
        prompts: interactive,
        tty,
        widths,
        saved,
        between: editor.as_ref().map(|_| saved.held_keys()),
    });
    // A panic aborts the client (no destructors run): the terminal's
    // settings go back first.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let _ = saved.apply(libc::STDIN_FILENO);
        previous(info);
    }));
    if let Some(between) = shared.between {
        between.apply(libc::STDIN_FILENO)?;
    }
    if let Some(ed) = editor.as_mut() {
        ed.set_helper(Some(ChatHelper { shared: Arc::clone(&shared) }));
    }
    if let Some(printer) = printer {
        let for_nudger = Arc::clone(&shared);
        thread::Builder::new().name("nudge".into()).spawn(move || nudge(&for_nudger, printer))?;
    }
    let mut continued = signal_hook::iterator::Signals::new([libc::SIGCONT])?;
    let for_continued = Arc::clone(&shared);
    thread::Builder::new()
        .name("continued".into())
        .spawn(move || continued.forever().for_each(|_| on_continued(&for_continued)))?;
    let (tx, rx) = sync_channel(1);
    let for_reader = Arc::clone(&shared);
    let reader = thread::Builder::new()
        .name("stdin".into())
        .spawn(move || read_requests(&for_reader, editor, &tx, &waker))?;
    Ok((Some(Console { shared, reader, finished: false }), rx))
}

impl Console {
    /// Asks for the next line, showing `prompt` (in interactive mode);
    /// `echo` false: a password, never shown.
    pub fn prompt(&self, prompt: &'static str, echo: bool) {
        let mut state = self.shared.lock();
        state.request = Some(Request { prompt, echo });
        self.shared.changed.notify_all();
    }

    /// Prints `text` (one or more lines) above the prompt and the line
    /// being typed, which are then shown again below it.
    pub fn print(&self, text: &str) -> io::Result<()> {
        let mut state = self.shared.lock();
        while state.activity == Activity::Editing
            && state.pending.len() > MAX_PENDING
            && !state.closing
        {
            state = self.shared.wait(state);
        }
        match state.activity {
            Activity::Editing if !state.closing => {
                state.queue(text);
                self.shared.changed.notify_all();
                Ok(())
            }
            Activity::Password if self.shared.screen => {
                // Nothing typed is shown: the prompt is all to redraw.
                let mut out = io::stdout().lock();
                write!(out, "\r\x1b[K{text}\n{}", state.prompt)?;
                out.flush()
            }
            _ => {
                let mut out = io::stdout().lock();
                if std::mem::take(&mut state.plain_prompt) {
                    out.write_all(b"\n")?;
                }
                writeln!(out, "{text}")?;
                out.flush()
            }
        }
    }

    /// Keeps the user names an event names for Tab completion (only from
    /// events that show the user exists).
    pub fn note_names(&self, event: &Event) {
        const KINDS: &[&str] = &[
            "message",
            "presence",
            "online",
            "delivered",
            "queued",
            "blocked",
            "unblocked",
            "consent_asked",
            "consent_request",
            "address",
            "address_changed",
            "expired",
            "peer_unavailable",
        ];
        if !KINDS.contains(&event.kind) {
            return;
        }
        let mut state = self.shared.lock();
        for key in ["from", "user", "to", "users"] {
            match event.field(key) {
                Some(Field::Text(name)) => add_name(&mut state.names, name),
                Some(Field::Names(names)) => {
                    names.iter().for_each(|name| add_name(&mut state.names, name));
                }
                _ => {}
            }
        }
    }

    /// Ends input for good: erases the prompt and anything half-typed,
    /// prints what is still queued, and puts the terminal's settings back
    /// as they were when the client started. Called once the session's
    /// last line is printed; nothing is read after it.
    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let mut state = self.shared.lock();
        state.closing = true;
        self.shared.changed.notify_all();
        let deadline = Instant::now() + STOP_WAIT;
        while state.activity == Activity::Editing && Instant::now() < deadline {
            drop(state);
            // SAFETY: the thread is alive (it is editing); while rustyline
            // reads, its own handler takes SIGINT (otherwise the client's
            // handler does, and the poll loop is no longer listening).
            // std's pthread handle is an integer; the libc crate's type is
            // that integer on glibc but a pointer on musl.
            #[allow(clippy::unnecessary_cast)]
            let reader = self.reader.as_pthread_t() as libc::pthread_t;
            unsafe {
                libc::pthread_kill(reader, libc::SIGINT);
            }
            state = self.shared.lock();
            if state.activity == Activity::Editing {
                state = self
                    .shared
                    .changed
                    .wait_timeout(state, STOP_RETRY)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        if state.activity == Activity::Password {
            self.shared.to_prompt_screen("\r\x1b[K");
            // Half a password must not reach the shell.
            terminal::discard_input(libc::STDIN_FILENO);
        }
        let mut out = io::stdout().lock();
        if std::mem::take(&mut state.plain_prompt) {
            let _ = out.write_all(b"\n");
        }
        let _ = out.write_all(std::mem::take(&mut state.pending).as_bytes());
        let _ = out.flush();
        // Nothing useful can be done if this fails: the client is ending.
        let _ = self.shared.saved.apply(libc::STDIN_FILENO);
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.finish();
    }
}

fn add_name(names: &mut BTreeSet<String>, name: &str) {
    if valid_name(name) && names.len() < MAX_NAMES && !names.contains(name) {
        names.insert(name.to_owned());
    }
}

/// The nudging thread: asks rustyline to redraw when lines are queued. It
/// may wait inside the printer (rustyline takes one message at a time),
/// which is why it is not the poll loop that sends.
fn nudge(shared: &Shared, mut printer: impl ExternalPrinter) {
    loop {
        let mut state = shared.lock();
        while !state.nudge && !state.closing {
            state = shared.wait(state);
        }
        if state.closing {
            return;
        }
        state.nudge = false;
        drop(state);
        if printer.print(NUDGE.to_owned()).is_err() {
            return;
        }
    }
}

/// After the client was stopped (Ctrl-Z, SIGSTOP) and continued (`fg`):
/// the shell had the terminal in the meantime and left its own settings,
/// so the reader's come back, and the prompt is shown again. rustyline
/// does this itself after Ctrl-Z, but may do it before the stop has taken
/// hold of its thread (it sends SIGTSTP to the process group and goes
/// on), and not at all after a stop it did not ask for.
fn on_continued(shared: &Shared) {
    let mut state = shared.lock();
    if state.closing {
        return;
    }
    let settings = match state.activity {
        Activity::Editing | Activity::Password => state.keys,
        Activity::Idle => shared.between,
    };
    if let Some(settings) = settings {
        let _ = settings.apply(libc::STDIN_FILENO);
    }
    match state.activity {
        Activity::Editing => {
            state.nudge = true;
            shared.changed.notify_all();
        }
        Activity::Password => shared.to_prompt_screen(&format!("\r\x1b[K{}", state.prompt)),
        Activity::Idle => {}
    }
}

/// How reading one line ended.
enum Outcome {
    Line(String),
    TooLong,
    Eof,
    /// Ctrl-C, or SIGINT while rustyline was reading.
    Interrupted,
    Error(io::Error),
}

/// The reader thread: reads one line per request until input ends or the
/// console is finished.
fn read_requests(
    shared: &Shared,
    mut editor: Option<Editor<ChatHelper, DefaultHistory>>,
    tx: &SyncSender<StdinEvent>,
    waker: &Waker,
) {
    let mut plain = LineBuffer::default();
    loop {
        let request = {
            let mut state = shared.lock();
            loop {
                if state.closing {
                    return;
                }
                if let Some(request) = state.request.take() {
                    break request;
                }
                state = shared.wait(state);
            }
        };
        let outcome = match (&mut editor, request.echo) {
            (_, false) => read_password(shared, &mut plain, request.prompt),
            (Some(editor), true) => edit_line(shared, editor, request.prompt),
            (None, true) => read_plain(shared, &mut plain, request.prompt),
        };
        if shared.lock().closing {
            return;
        }
        let event = match outcome {
            Outcome::Line(line) => StdinEvent::Line(line),
            Outcome::TooLong => StdinEvent::TooLong,
            Outcome::Eof => StdinEvent::Eof,
            Outcome::Error(e) => StdinEvent::Error(e),
            Outcome::Interrupted => {
                // The poll loop ends the session on SIGINT, as when Ctrl-C
                // is pressed while nothing is being read. The thread stays,
                // so the loop never takes its end for end of input.
                // SAFETY: kill sends a signal; the client handles SIGINT.
                unsafe {
                    libc::kill(libc::getpid(), libc::SIGINT);
                }
                continue;
            }
        };
        let last = matches!(event, StdinEvent::Eof | StdinEvent::Error(_));
        if !deliver(tx, waker, event) || last {
            return;
        }
    }
}

/// Reads one line with rustyline.
fn edit_line(
    shared: &Shared,
    editor: &mut Editor<ChatHelper, DefaultHistory>,
    prompt: &'static str,
) -> Outcome {
    {
        let mut state = shared.lock();
        if state.closing {
            return Outcome::Interrupted;
        }
        state.activity = Activity::Editing;
        prompt.clone_into(&mut state.prompt);
        state.line.clear();
        state.drawn = false;
        state.keys = None;
    }
    let result = editor.readline(prompt);
    let mut state = shared.lock();
    state.activity = Activity::Idle;
    let mut out = io::stdout().lock();
    if result.is_err() && state.drawn {
        // rustyline left the cursor on the row below the prompt and the
        // line: take them off the screen, so nothing is left after the
        // client's last line.
        let rows = rows_taken(shared.widths, &state.prompt, &state.line, terminal::columns(1));
        let _ = write!(out, "\x1b[{rows}A\r\x1b[J");
    }
    let _ = out.write_all(std::mem::take(&mut state.pending).as_bytes());
    let _ = out.flush();
    shared.changed.notify_all();
    drop(state);
    match result {
        Ok(line) => {
            let line = without_controls(&line);
            if line.len() >= MAX_LINE {
                return Outcome::TooLong;
            }
            if prompt == render::PROMPT_COMMAND && !line.trim().is_empty() {
                // Failing to remember a line is not worth reporting.
                let _ = editor.add_history_entry(line.as_str());
            }
            Outcome::Line(line)
        }
        Err(ReadlineError::Eof) => Outcome::Eof,
        Err(ReadlineError::Interrupted) => Outcome::Interrupted,
        Err(ReadlineError::Io(e)) => Outcome::Error(e),
        Err(e) => Outcome::Error(io::Error::other(e)),
    }
}

/// `line` without control characters other than tab: a line is one
/// line, whatever was typed with Ctrl-V (the old editor dropped them too).
fn without_controls(line: &str) -> String {
    line.chars().filter(|&c| c == '\t' || !c.is_control()).collect()
}

/// How many terminal rows `prompt` followed by `line` take on a terminal
/// `columns` wide, counted as rustyline counts them (its widths, its
/// wrapping of a wide character that does not fit, and a row begun when
/// the last one is exactly full).
pub fn rows_taken(widths: GraphemeClusterMode, prompt: &str, line: &str, columns: u16) -> u16 {
    let after_prompt = position(widths, prompt, (0, 0), columns);
    position(widths, line, after_prompt, columns).0.saturating_add(1)
}

/// Where the cursor ends, as (row, column), after `text` is written from
/// `from`. Mirrors rustyline's `calculate_position` (escape sequences
/// take no room; tab stops every 8 columns).
fn position(widths: GraphemeClusterMode, text: &str, from: (u16, u16), columns: u16) -> (u16, u16) {
    const TAB_STOP: u16 = 8;
    let columns = columns.max(1);
    let (mut row, mut col) = from;
    // 0: text; 1: after ESC; 2: in a CSI sequence.
    let mut escape = 0u8;
    for g in text.graphemes(true) {
        if g == "\n" {
            row = row.saturating_add(1);
            col = 0;
            continue;
        }
        let width = if g == "\t" {
            TAB_STOP - (col % TAB_STOP)
        } else if escape == 1 {
            escape = if g == "[" { 2 } else { 0 };
            0
        } else if escape == 2 {
            if !(g == ";" || g.as_bytes().first().is_some_and(u8::is_ascii_digit)) {
                escape = 0;
            }
            0
        } else if g == "\x1b" {
            escape = 1;
            0
        } else {
            widths.width(g)
        };
        col = col.saturating_add(width);
        if col > columns {
            row = row.saturating_add(1);
            col = width;
        }
    }
    if col == columns {
        row = row.saturating_add(1);
        col = 0;
    }
    (row, col)
}

/// Reads one line as the terminal's line discipline delivers it (echoed
/// by the terminal), for terminals rustyline does not drive.
fn read_plain(shared: &Shared, buf: &mut LineBuffer, prompt: &'static str) -> Outcome {
    if shared.prompts && shared.screen {
        let mut state = shared.lock();
        let mut out = io::stdout().lock();
        let _ = out.write_all(prompt.as_bytes()).and_then(|()| out.flush());
        state.plain_prompt = true;
    }
    let outcome = next_plain_line(buf);
    shared.lock().plain_prompt = false;
    outcome
}

fn next_plain_line(buf: &mut LineBuffer) -> Outcome {
    let stdin = io::stdin();
    loop {
        if let Some(line) = buf.next_line() {
            return plain_outcome(line);
        }
        match buf.read_from(&mut stdin.lock()) {
            Ok(0) => {
                return match buf.take_last() {
                    Some(line) => plain_outcome(line),
                    None => Outcome::Eof,
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Outcome::Error(e),
        }
    }
}

fn plain_outcome(line: Line<'_>) -> Outcome {
    match line {
        Line::Complete(bytes) => Outcome::Line(String::from_utf8_lossy(bytes).into_owned()),
        Line::TooLong => Outcome::TooLong,
    }
}

/// Reads a password key by key, with echo off, from standard input (a
/// terminal); the prompt goes where [`Shared::to_prompt_screen`] writes.
fn read_password(shared: &Shared, buf: &mut LineBuffer, prompt: &'static str) -> Outcome {
    // A line the terminal already delivered (typed ahead) is used as it is.
    if let Some(line) = buf.next_line() {
        return plain_outcome(line);
    }
    let before = match Settings::of(libc::STDIN_FILENO) {
        Ok(settings) => settings,
        Err(e) => return Outcome::Error(e),
    };
    let keys = before.keystrokes();
    {
        let mut state = shared.lock();
        if state.closing {
            return Outcome::Interrupted;
        }
        if let Err(e) = keys.apply(libc::STDIN_FILENO) {
            return Outcome::Error(e);
        }
        state.activity = Activity::Password;
        state.keys = Some(keys);
        prompt.clone_into(&mut state.prompt);
        shared.to_prompt_screen(prompt);
    }
    let mut password = PasswordKeys::default();
    let outcome = loop {
        let key = match read_key() {
            Ok(Some(key)) => key,
            Ok(None) => break Outcome::Eof,
            Err(e) => break Outcome::Error(e),
        };
        if shared.lock().closing {
            // Console::finish has put the terminal back already.
            return Outcome::Interrupted;
        }
        match password.key(key) {
            KeyResult::More => {}
            KeyResult::Escape => skip_escape_sequence(),
            KeyResult::Done(outcome) => break outcome,
            KeyResult::Suspend => {
                // As rustyline does for Ctrl-Z: the shell gets the
                // terminal as it was; on return, keys again, prompt again.
                let _ = shared.saved.apply(libc::STDIN_FILENO);
                // SAFETY: kill sends SIGTSTP to the client's process group.
                unsafe {
                    libc::kill(0, libc::SIGTSTP);
                }
                // This thread may get here before the stop takes hold of
                // it: on_continued puts keys and prompt back after it.
                let _ = keys.apply(libc::STDIN_FILENO);
                shared.to_prompt_screen(&format!("\r\x1b[K{prompt}"));
            }
        }
    };
    let mut state = shared.lock();
    state.activity = Activity::Idle;
    if state.closing {
        return Outcome::Interrupted;
    }
    let _ = before.apply(libc::STDIN_FILENO);
    match outcome {
        Outcome::Line(_) | Outcome::TooLong => shared.to_prompt_screen("\n"),
        _ => shared.to_prompt_screen("\r\x1b[K"),
    }
    outcome
}

/// Reads one byte from standard input; `None` at its end.
fn read_key() -> io::Result<Option<u8>> {
    let mut key = 0u8;
    loop {
        // SAFETY: reads at most one byte into `key`.
        let n = unsafe { libc::read(libc::STDIN_FILENO, (&raw mut key).cast(), 1) };
        match n {
            1 => return Ok(Some(key)),
            0 => return Ok(None),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Whether a byte arrives on standard input within `ms` milliseconds.
fn key_within(ms: libc::c_int) -> bool {
    let mut fd = libc::pollfd { fd: libc::STDIN_FILENO, events: libc::POLLIN, revents: 0 };
    // SAFETY: polls the one descriptor given.
    unsafe { libc::poll(&mut fd, 1, ms) == 1 }
}

/// Consumes the rest of an escape sequence (a cursor key, Home, Delete,
/// Alt with a key) after its ESC: `ESC [ params final`, `ESC O x`, or
/// `ESC x`. A lone Esc is nothing more.
fn skip_escape_sequence() {
    if !key_within(ESCAPE_WAIT_MS) {
        return;
    }
    match read_key() {
        Ok(Some(b'[')) => {
            // Parameters and intermediates, up to the final byte.
            for _ in 0..32 {
                match read_key() {
                    Ok(Some(b)) if (0x40..=0x7e).contains(&b) => return,
                    Ok(Some(_)) => {}
                    _ => return,
                }
            }
        }
        Ok(Some(b'O')) => {
            let _ = read_key();
        }
        _ => {}
    }
}

/// A password being typed: the keys that edit it, none shown.
#[derive(Default)]
struct PasswordKeys {
    bytes: Vec<u8>,
}

/// What one key did to a password.
enum KeyResult {
    More,
    /// ESC: the rest of an escape sequence follows.
    Escape,
    /// Ctrl-Z.
    Suspend,
    Done(Outcome),
}

impl PasswordKeys {
    fn key(&mut self, key: u8) -> KeyResult {
        match key {
            b'\r' | b'\n' => {
                let bytes = std::mem::take(&mut self.bytes);
                KeyResult::Done(Outcome::Line(String::from_utf8_lossy(&bytes).into_owned()))
            }
            // Backspace: the last character, whole.
            0x7f | 0x08 => {
                if let Some(last) = self.bytes.iter().rposition(|&b| b & 0xC0 != 0x80) {
                    self.bytes.truncate(last);
                }
                KeyResult::More
            }
            // Ctrl-U: start again.
            0x15 => {
                self.bytes.clear();
                KeyResult::More
            }
            // Ctrl-D: end of input, on an empty password only.
            0x04 if self.bytes.is_empty() => KeyResult::Done(Outcome::Eof),
            // Ctrl-C and Ctrl-\ (rustyline treats both as an interrupt).
            0x03 | 0x1c => KeyResult::Done(Outcome::Interrupted),
            0x1a => KeyResult::Suspend,
            0x1b => KeyResult::Escape,
            key if key < 0x20 => KeyResult::More,
            _ if self.bytes.len() >= MAX_LINE - 1 => KeyResult::More,
            key => {
                self.bytes.push(key);
                KeyResult::More
            }
        }
    }
}

/// What rustyline is given: completion, and the hooks that hand out
/// queued lines and follow the line being typed.
struct ChatHelper {
    shared: Arc<Shared>,
}

impl ChatHelper {
    fn follow(&self, line: &str) {
        let mut state = self.shared.lock();
        if state.line != line {
            line.clone_into(&mut state.line);
        }
    }
}

impl Helper for ChatHelper {}

impl Validator for ChatHelper {}

impl Hinter for ChatHelper {
    type Hint = String;

    /// Never a hint; rustyline calls this whenever the line changes, which
    /// is how the console knows what is on the screen.
    fn hint(&self, line: &str, _pos: usize, _ctx: &Context<'_>) -> Option<String> {
        self.follow(line);
        None
    }
}

impl Highlighter for ChatHelper {
    /// The prompt, after any lines queued for printing: rustyline calls
    /// this in every redraw, with the prompt's old rows cleared and the
    /// cursor at the start of the first, and writes what it returns.
    fn highlight_prompt<'b, 's: 'b, 'p: 'b>(&'s self, prompt: &'p str, _: bool) -> Cow<'b, str> {
        let mut state = self.shared.lock();
        if state.keys.is_none() {
            // Drawing happens in rustyline's mode: note it for on_continued.
            state.keys = Settings::of(libc::STDIN_FILENO).ok();
        }
        let shown = state.prompt_shown(prompt);
        if matches!(shown, Cow::Owned(_)) {
            // print() may be waiting for room in the queue.
            self.shared.changed.notify_all();
        }
        shown
    }

    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        self.follow(line);
        Cow::Borrowed(line)
    }

    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        false
    }
}

impl Completer for ChatHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let names = self.shared.lock().names.clone();
        Ok(complete(line, pos, &names))
    }
}

/// Tab completion: the first word from [`commands`], the second word of a
/// command that takes a user from `names`. Returns where the word being
/// completed starts and the candidates, each followed by a space.
pub fn complete(line: &str, pos: usize, names: &BTreeSet<String>) -> (usize, Vec<Pair>) {
    let Some(before) = line.get(..pos) else {
        return (pos, Vec::new());
    };
    let start = before
        .rfind(char::is_whitespace)
        .map_or(0, |i| i + before[i..].chars().next().map_or(1, char::len_utf8));
    let word = &before[start..];
    let earlier: Vec<&str> = before[..start].split_whitespace().collect();
    let pair = |name: &str| Pair { display: name.to_owned(), replacement: format!("{name} ") };
    let candidates = match earlier.as_slice() {
        [] => {
            let mut found: Vec<&str> = commands().filter(|c| c.starts_with(word)).collect();
            found.sort_unstable();
            found.into_iter().map(pair).collect()
        }
        [command] if USER_COMMANDS.contains(command) => {
            names.iter().filter(|n| n.starts_with(word)).map(|n| pair(n)).collect()
        }
        _ => Vec::new(),
    };
    (start, candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replacements(line: &str, names: &[&str]) -> (usize, Vec<String>) {
        let names = names.iter().map(|n| (*n).to_owned()).collect();
        let (start, pairs) = complete(line, line.len(), &names);
        (start, pairs.into_iter().map(|p| p.replacement).collect())
    }

    #[test]
    fn tab_completes_commands_then_user_names() {
        assert_eq!(replacements("onl", &[]), (0, vec!["online ".to_owned()]));
        assert_eq!(replacements("b", &[]).1, vec!["block ", "broadcast "]);
        assert_eq!(replacements("  mes", &[]), (2, vec!["message ".to_owned()]));
        let names = ["Alice", "Bob", "Bobby"];
        assert_eq!(replacements("message Bo", &names), (8, vec!["Bob ".into(), "Bobby ".into()]));
        assert_eq!(replacements("block  A", &names).1, vec!["Alice "]);
        assert_eq!(replacements("private ", &names).1.len(), 3);
        // Not a user-taking command, or past the user: nothing.
        assert!(replacements("broadcast A", &names).1.is_empty());
        assert!(replacements("message Bob hi A", &names).1.is_empty());
        assert!(replacements("nosuch A", &names).1.is_empty());
        assert_eq!(replacements("he", &[]).1, vec!["help "], "every command help lists");
    }

    #[test]
    fn completion_is_safe_at_any_cursor_position() {
        let names = BTreeSet::new();
        for pos in 0..=8 {
            let _ = complete("m\u{e9}ss\u{6f22}ge", pos, &names);
        }
        assert_eq!(complete("onl", 99, &names).1.len(), 0);
    }

    #[test]
    fn names_are_kept_only_if_valid_and_within_the_bound() {
        let mut names = BTreeSet::new();
        add_name(&mut names, "B");
        add_name(&mut names, "has space");
        add_name(&mut names, "");
        assert_eq!(names.len(), 1);
        for i in 0..MAX_NAMES + 10 {
            add_name(&mut names, &format!("u{i}"));
        }
        assert_eq!(names.len(), MAX_NAMES);
    }

    #[test]
    fn rows_are_counted_as_rustyline_wraps_them() {
        let w = GraphemeClusterMode::WcWidth;
        assert_eq!(rows_taken(w, "> ", "", 80), 1);
        assert_eq!(rows_taken(w, "> ", &"x".repeat(77), 80), 1);
        // Exactly full: the cursor is on the next row.
        assert_eq!(rows_taken(w, "> ", &"x".repeat(78), 80), 2);
        assert_eq!(rows_taken(w, "> ", &"x".repeat(79), 80), 2);
        assert_eq!(rows_taken(w, "> ", &"x".repeat(300), 80), 4);
        // Wide characters take two columns; one that does not fit moves
        // whole to the next row.
        assert_eq!(rows_taken(w, "> ", "\u{6f22}\u{5b57}\u{6f22}\u{5b57}", 10), 2);
        assert_eq!(rows_taken(w, "> ", "\u{6f22}\u{5b57}\u{6f22}", 10), 1);
        assert_eq!(rows_taken(w, "> ", "x\u{6f22}\u{5b57}\u{6f22}\u{5b57}", 10), 2);
        assert_eq!(position(w, "x\u{6f22}\u{5b57}\u{6f22}\u{5b57}", (0, 2), 10), (1, 2));
    }

    #[test]
    fn password_keys_edit_without_showing() {
        let mut keys = PasswordKeys::default();
        let mut result = None;
        for &key in b"A_pX\x7fwd\x1b" {
            match keys.key(key) {
                KeyResult::Escape => {}
                KeyResult::More => {}
                _ => result = Some(()),
            }
        }
        assert!(result.is_none());
        assert!(matches!(keys.key(b'\r'), KeyResult::Done(Outcome::Line(ref p)) if p == "A_pwd"));
        assert!(matches!(keys.key(0x04), KeyResult::Done(Outcome::Eof)));
        keys.key(b'x');
        assert!(matches!(keys.key(0x04), KeyResult::More), "Ctrl-D on a typed password");
        keys.key(0x15);
        assert!(matches!(keys.key(b'\n'), KeyResult::Done(Outcome::Line(ref p)) if p.is_empty()));
        assert!(matches!(keys.key(0x03), KeyResult::Done(Outcome::Interrupted)));
        assert!(matches!(keys.key(0x1a), KeyResult::Suspend));
        for _ in 0..MAX_LINE * 2 {
            keys.key(b'y');
        }
        assert_eq!(keys.bytes.len(), MAX_LINE - 1, "bounded");
    }

    #[test]
    fn queued_lines_are_written_once_before_the_prompt() {
        let mut state = State::new();
        assert_eq!(state.prompt_shown("> "), "> ");
        state.queue("User B has logged on.");
        state.queue("B: hi\nthere");
        assert!(state.nudge);
        assert_eq!(state.prompt_shown("> "), "User B has logged on.\nB: hi\nthere\n> ");
        assert_eq!(state.prompt_shown("> "), "> ", "taken by the first redraw");
        // The history search draws its own prompt: that is what is erased.
        assert_eq!(state.prompt_shown("(reverse-i-search)`': "), "(reverse-i-search)`': ");
        assert_eq!(state.prompt, "(reverse-i-search)`': ");
        assert!(state.drawn);
    }

    #[test]
    fn control_characters_never_reach_a_line() {
        assert_eq!(without_controls("message B a\nLOGOUT\r\x1b[D\tz"), "message B aLOGOUT[D\tz");
    }
}
