//! Carries log files that libvirt writes into vmpod's log, one event per
//! line with its `component`: qemu's log (`/var/log/libvirt/qemu/NAME.log`)
//! as `qemu`, and optionally the guest's serial console as `serial`. Each
//! source also has its own tracing target, so `RUST_LOG=info,serial=off`
//! silences it.
//!
//! A file is polled from a small thread of its own (four times a second):
//! plain reads of a local file need no async machinery, and a slow disk
//! stalls only the tail. The tail copes with what libvirt and virtlogd do
//! to these files: it waits for a file that does not exist yet, starts from
//! the beginning of a file that shrank, and follows a rotation (a new inode
//! under the path). The serial log is truncated at every start of the
//! domain, and may outgrow the old offset before a poll notices: the
//! supervisor pauses the tail around the start and resumes it from the
//! beginning, so no line is lost, cut or read twice.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::termtext::Screen;

const POLL: Duration = Duration::from_millis(250);
/// A line longer than this is cut into pieces.
const MAX_LINE: usize = 16 * 1024;
/// Bytes read per poll at most, so a flood cannot monopolise the thread.
const MAX_READ: usize = 1 << 20;
/// A last line without its newline is logged after this long.
const PARTIAL_AFTER: Duration = Duration::from_secs(1);

/// Which file a tail follows; names its component and target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Qemu,
    Serial,
}

impl Source {
    pub fn component(self) -> &'static str {
        match self {
            Source::Qemu => "qemu",
            Source::Serial => "serial",
        }
    }

    fn emit(self, line: &str) {
        // The target must be a literal: one call per source.
        match self {
            Source::Qemu => tracing::info!(target: "qemu", component = "qemu", "{line}"),
            Source::Serial => tracing::info!(target: "serial", component = "serial", "{line}"),
        }
    }
}

/// Where to start in a file that already exists when the tail starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Skip what is there: it is from an earlier run.
    End,
    Beginning,
}

struct Shared {
    stop: AtomicBool,
    /// Held by the thread while it polls, so [`LogTail::pause`] returns only
    /// once no read is in progress.
    control: Mutex<Control>,
}

#[derive(Default)]
struct Control {
    paused: bool,
    rewind: bool,
}

impl Shared {
    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running tail; dropping it reads what is left and stops.
pub struct LogTail {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogTail {
    /// The serial console is terminal output: it is carried as the screen
    /// would show it ([`crate::termtext`]).
    pub fn spawn(path: PathBuf, source: Source, start: Start) -> LogTail {
        let terminal = source == Source::Serial;
        Self::spawn_inner(path, start, terminal, move |line| source.emit(line))
    }

    /// Like [`spawn`](Self::spawn) with lines going to `sink` (tests).
    pub fn spawn_with(
        path: PathBuf,
        start: Start,
        sink: impl FnMut(&str) + Send + 'static,
    ) -> LogTail {
        Self::spawn_inner(path, start, false, sink)
    }

    /// Like [`spawn_with`](Self::spawn_with), for terminal output.
    pub fn spawn_terminal_with(
        path: PathBuf,
        start: Start,
        sink: impl FnMut(&str) + Send + 'static,
    ) -> LogTail {
        Self::spawn_inner(path, start, true, sink)
    }

    fn spawn_inner(
        path: PathBuf,
        start: Start,
        terminal: bool,
        sink: impl FnMut(&str) + Send + 'static,
    ) -> LogTail {
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            control: Mutex::new(Control::default()),
        });
        let thread_shared = shared.clone();
        let name = format!("tail {}", path.display());
        let thread = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || Follower::new(path, start, terminal, sink).run(&thread_shared));
        match thread {
            Ok(t) => LogTail {
                shared,
                thread: Some(t),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a log tail thread; that log is not carried");
                LogTail {
                    shared,
                    thread: None,
                }
            }
        }
    }

    /// Stops reading until [`resume`](Self::resume); returns once no read
    /// is in progress. Call it before something truncates the file.
    pub fn pause(&self) {
        self.shared.control().paused = true;
    }

    /// Reads again; from the file's beginning when `from_start` (the file
    /// was truncated while paused).
    pub fn resume(&self, from_start: bool) {
        {
            let mut control = self.shared.control();
            control.paused = false;
            control.rewind |= from_start;
        }
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for LogTail {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

struct Follower<F> {
    path: PathBuf,
    start: Start,
    sink: F,
    file: Option<File>,
    inode: u64,
    pos: u64,
    partial: Vec<u8>,
    partial_since: Option<Instant>,
    opened_once: bool,
    /// For terminal output: the last line, held while the next may draw
    /// over it, and since when.
    screen: Option<Screen>,
    held_since: Option<Instant>,
}

impl<F: FnMut(&str)> Follower<F> {
    fn new(path: PathBuf, start: Start, terminal: bool, sink: F) -> Self {
        // A file that appears later is new: all of it belongs to this run.
        let start = if path.exists() {
            start
        } else {
            Start::Beginning
        };
        Follower {
            path,
            start,
            sink,
            file: None,
            inode: 0,
            pos: 0,
            partial: Vec::new(),
            partial_since: None,
            opened_once: false,
            screen: terminal.then(Screen::default),
            held_since: None,
        }
    }

    fn run(mut self, shared: &Shared) {
        loop {
            let stopping = shared.stop.load(Ordering::Relaxed);
            {
                let mut control = shared.control();
                if std::mem::take(&mut control.rewind) {
                    self.reopen_from_start();
                }
                if !control.paused {
                    self.poll();
                }
            }
            if stopping {
                self.flush_partial();
                self.flush_screen();
                return;
            }
            std::thread::park_timeout(POLL);
        }
    }

    /// What is at the path now is new (truncated, or replaced by a new
    /// file): drop the handle, which may hold the old file, and read the
    /// path from its start.
    fn reopen_from_start(&mut self) {
        self.flush_partial();
        self.flush_screen();
        self.file = None;
        self.pos = 0;
        self.opened_once = true;
    }

    fn rewind(&mut self) {
        self.flush_partial();
        self.flush_screen();
        self.pos = 0;
        if let Some(f) = &mut self.file {
            let _ = f.seek(SeekFrom::Start(0));
        }
    }

    fn poll(&mut self) {
        let meta = std::fs::metadata(&self.path).ok();
        if self.file.is_some() {
            match &meta {
                Some(m) if m.ino() != self.inode => {
                    // Rotated: finish the old file, then take the new one.
                    self.read_available();
                    self.flush_partial();
                    self.flush_screen();
                    self.file = None;
                }
                Some(m) if m.len() < self.pos => self.rewind(),
                _ => {}
            }
        }
        if self.file.is_none() {
            self.open(meta.as_ref().map(|m| m.len()));
        }
        self.read_available();
        if self
            .partial_since
            .is_some_and(|t| t.elapsed() >= PARTIAL_AFTER)
        {
            self.flush_partial();
        }
        if self
            .held_since
            .is_some_and(|t| t.elapsed() >= PARTIAL_AFTER)
        {
            self.flush_screen();
        }
    }

    fn open(&mut self, len: Option<u64>) {
        let Ok(mut file) = File::open(&self.path) else {
            return;
        };
        let Ok(meta) = file.metadata() else { return };
        self.inode = meta.ino();
        let skip = !self.opened_once && self.start == Start::End;
        self.pos = if skip { len.unwrap_or(meta.len()) } else { 0 };
        self.opened_once = true;
        if file.seek(SeekFrom::Start(self.pos)).is_ok() {
            self.file = Some(file);
        }
    }

    fn read_available(&mut self) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        while total < MAX_READ {
            let Some(file) = &mut self.file else { return };
            match file.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    total += n;
                    self.pos += n as u64;
                    self.take(&buf[..n]);
                }
            }
        }
    }

    fn take(&mut self, mut bytes: &[u8]) {
        while let Some(i) = bytes.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&bytes[..i]);
            self.flush_partial();
            bytes = &bytes[i + 1..];
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() > MAX_LINE {
            let rest = self.partial.split_off(MAX_LINE);
            self.flush_partial();
            self.partial = rest;
        }
        if !self.partial.is_empty() && self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
    }

    fn flush_partial(&mut self) {
        self.partial_since = None;
        let line = String::from_utf8_lossy(&self.partial);
        match &mut self.screen {
            Some(screen) => {
                if let Some(done) = screen.line(&line) {
                    (self.sink)(&done);
                }
                self.held_since = screen.holding().then(Instant::now);
            }
            None => {
                let line = line.trim_end();
                if !line.is_empty() {
                    (self.sink)(line);
                }
            }
        }
        self.partial.clear();
    }

    fn flush_screen(&mut self) {
        self.held_since = None;
        if let Some(line) = self.screen.as_mut().and_then(Screen::flush) {
            (self.sink)(&line);
        }
    }
}

/// qemu's own log file for domain `name`.
pub fn qemu_log_path(name: &str) -> PathBuf {
    Path::new("/var/log/libvirt/qemu").join(format!("{name}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::mpsc;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmpod-logtail-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("x.log")
    }

    fn tail(path: &Path, start: Start) -> (LogTail, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let t = LogTail::spawn_with(path.to_path_buf(), start, move |l| {
            let _ = tx.send(l.to_string());
        });
        (t, rx)
    }

    fn next(rx: &mpsc::Receiver<String>) -> String {
        rx.recv_timeout(Duration::from_secs(5))
            .expect("a line within 5 s")
    }

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn waits_for_the_file_then_follows_it_line_by_line() {
        let path = scratch("wait");
        let (t, rx) = tail(&path, Start::End);
        std::thread::sleep(POLL * 2);
        // Created after the tail started: read from its beginning.
        append(&path, "one\r\ntwo\n\nthr");
        assert_eq!(next(&rx), "one");
        assert_eq!(next(&rx), "two");
        append(&path, "ee\n");
        assert_eq!(next(&rx), "three");
        drop(t);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn an_existing_file_is_skipped_with_start_end() {
        let path = scratch("skip");
        append(&path, "old run\n");
        let (_t, rx) = tail(&path, Start::End);
        std::thread::sleep(POLL * 2);
        append(&path, "new run\n");
        assert_eq!(next(&rx), "new run");
        let (_t2, rx2) = tail(&path, Start::Beginning);
        assert_eq!(next(&rx2), "old run");
    }

    #[test]
    fn truncation_and_rotation_start_over() {
        let path = scratch("trunc");
        append(&path, "a fairly long first line of the first boot\n");
        let (_t, rx) = tail(&path, Start::Beginning);
        assert_eq!(next(&rx), "a fairly long first line of the first boot");
        std::fs::write(&path, "boot 2\n").unwrap();
        assert_eq!(next(&rx), "boot 2");
        std::fs::rename(&path, path.with_extension("log.0")).unwrap();
        append(&path, "after rotation\n");
        assert_eq!(next(&rx), "after rotation");
    }

    #[test]
    fn a_paused_tail_resumes_a_truncated_file_from_its_start() {
        let path = scratch("restart");
        append(&path, "short\n");
        let (t, rx) = tail(&path, Start::Beginning);
        assert_eq!(next(&rx), "short");
        // Truncated and grown past the old offset: without the pause a poll
        // could read the new file from the old offset.
        t.pause();
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(b"second boot, a longer line\n").unwrap();
        std::thread::sleep(POLL * 2);
        assert!(rx.try_recv().is_err(), "nothing is read while paused");
        t.resume(true);
        assert_eq!(next(&rx), "second boot, a longer line");
        // Replaced by a new file while paused: only the new file is read.
        t.pause();
        let fresh = path.with_extension("new");
        std::fs::write(&fresh, "third boot\n").unwrap();
        std::fs::rename(&fresh, &path).unwrap();
        t.resume(true);
        assert_eq!(next(&rx), "third boot");
        // Resumed without a rewind (a guest adopted, not started): no line twice.
        t.pause();
        t.resume(false);
        append(&path, "more\n");
        assert_eq!(next(&rx), "more");
        drop(t);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_last_line_without_newline_comes_out_after_a_while_or_at_stop() {
        let path = scratch("partial");
        let (t, rx) = tail(&path, Start::Beginning);
        append(&path, "login: ");
        assert_eq!(next(&rx), "login:");
        append(&path, "tail end");
        drop(t);
        assert_eq!(next(&rx), "tail end");
    }

    #[test]
    fn a_serial_console_is_carried_as_the_screen_shows_it() {
        let path = scratch("terminal");
        let (tx, rx) = mpsc::channel();
        let t = LogTail::spawn_terminal_with(path.clone(), Start::End, move |l| {
            let _ = tx.send(l.to_string());
        });
        std::thread::sleep(POLL * 2);
        // systemd 252's ephemeral status while a device is slow, then its
        // final line (see termtext's tests), written as the guest would.
        append(
            &path,
            "[\x1b[0;32m  OK  \x1b[0m] Started x.\n[\x1b[0;31m*     \x1b[0m] A start job is running for /dev/vda1 (1s / 1min 30s)\n",
        );
        assert_eq!(next(&rx), "[  OK  ] Started x.");
        for s in 2..6 {
            append(
                &path,
                &format!(
                    "\x1bM\r\x1b[K[\x1b[0;1;31m*\x1b[0m\x1b[0;31m*    \x1b[0m] A start job is running for /dev/vda1 ({s}s / 1min 30s)\n"
                ),
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        append(
            &path,
            "\x1bM\r\x1b[K[\x1b[0;32m  OK  \x1b[0m] Found device vda1.\n\x1b[Kdebian login: ",
        );
        // The held spinner lines were drawn over; the prompt (no newline)
        // comes out after a while.
        assert_eq!(next(&rx), "[  OK  ] Found device vda1.");
        assert_eq!(next(&rx), "debian login:");
        drop(t);
        assert_eq!(rx.try_recv().ok(), None, "nothing else");
    }
}
