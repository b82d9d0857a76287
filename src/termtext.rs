//! What a person would read of a terminal's output, line by line: the
//! guest's serial console is written for a screen, and carried into the log
//! it should say what the screen finally showed. Colours and other escape
//! sequences go; a carriage return or a cursor move back lets later text
//! overwrite earlier text on the line, as on the screen; and a line that
//! begins by moving the cursor up (ESC M, systemd's ephemeral status:
//! "A start job is running for ... (3s / 1min 30s)" with its spinner)
//! replaces the line before it, so the log keeps only the last version.

/// One line (without its `\n`) as the screen would show it, and whether it
/// was drawn over the line before it.
#[derive(Debug, PartialEq, Eq)]
pub struct ScreenLine {
    pub text: String,
    pub replaces_previous: bool,
}

const ESC: char = '\u{1b}';

/// Renders `raw`, a line of terminal output decoded lossily.
pub fn render(raw: &str) -> ScreenLine {
    let mut cells: Vec<char> = Vec::new();
    let mut cursor = 0usize;
    let mut replaces_previous = false;
    let mut chars = raw.chars().peekable();
    let put = |cells: &mut Vec<char>, cursor: &mut usize, c: char| {
        if *cursor < cells.len() {
            cells[*cursor] = c;
        } else {
            cells.resize(*cursor, ' ');
            cells.push(c);
        }
        *cursor += 1;
    };
    while let Some(c) = chars.next() {
        match c {
            '\r' => cursor = 0,
            '\u{8}' => cursor = cursor.saturating_sub(1),
            '\t' => {
                let next = (cursor / 8 + 1) * 8;
                while cursor < next {
                    put(&mut cells, &mut cursor, ' ');
                }
            }
            ESC => match chars.next() {
                // CSI: parameters and intermediates, then a final byte.
                Some('[') => {
                    let mut params = String::new();
                    let mut fin = None;
                    for c in chars.by_ref() {
                        if ('\u{40}'..='\u{7e}').contains(&c) {
                            fin = Some(c);
                            break;
                        }
                        params.push(c);
                    }
                    let n = |default: usize| {
                        params
                            .split(';')
                            .next()
                            .and_then(|p| p.parse::<usize>().ok())
                            .unwrap_or(default)
                    };
                    match fin {
                        // Erase in line: to the end, to the cursor, all.
                        Some('K') => match n(0) {
                            0 => cells.truncate(cursor),
                            1 => {
                                for cell in cells.iter_mut().take(cursor + 1) {
                                    *cell = ' ';
                                }
                            }
                            _ => cells.clear(),
                        },
                        Some('G') => cursor = n(1).saturating_sub(1),
                        Some('C') => cursor += n(1).max(1),
                        Some('D') => cursor = cursor.saturating_sub(n(1).max(1)),
                        // Cursor up, or to a row: what follows overwrites
                        // what was printed before.
                        Some('A') | Some('F') | Some('H') | Some('f') => {
                            replaces_previous = true;
                            cells.clear();
                            cursor = 0;
                        }
                        // Colours, modes, scrolling, ...: nothing to read.
                        _ => {}
                    }
                }
                // OSC (window titles, links): up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' {
                            break;
                        }
                        if c == ESC && chars.peek() == Some(&'\\') {
                            chars.next();
                            break;
                        }
                    }
                }
                // Reverse line feed: back onto the line before.
                Some('M') => {
                    replaces_previous = true;
                    cells.clear();
                    cursor = 0;
                }
                // Character set selection takes one more character.
                Some('(') | Some(')') | Some('*') | Some('+') => {
                    chars.next();
                }
                // Other two-character sequences (ESC 7, ESC =, ...).
                _ => {}
            },
            c if c.is_control() => {}
            c => put(&mut cells, &mut cursor, c),
        }
    }
    let text: String = cells.into_iter().collect();
    ScreenLine {
        text: text.trim_end().to_string(),
        replaces_previous,
    }
}

/// Holds back the last line for a moment, since the next one may draw over
/// it; a line is final once a line that does not replace it follows, or
/// when the caller decides it waited long enough.
#[derive(Debug, Default)]
pub struct Screen {
    held: Option<String>,
}

impl Screen {
    /// Takes one raw line; returns the line that is now final, if any.
    pub fn line(&mut self, raw: &str) -> Option<String> {
        let line = render(raw);
        let previous = if line.replaces_previous {
            // Drawn over: never shown for long, so not logged.
            self.held.take();
            None
        } else {
            self.held.take()
        };
        if !line.text.is_empty() {
            self.held = Some(line.text);
        }
        previous
    }

    /// The held line, now taken as final.
    pub fn flush(&mut self) -> Option<String> {
        self.held.take()
    }

    pub fn holding(&self) -> bool {
        self.held.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What systemd 252 (Debian 12) writes to the console while a unit
    /// starts slowly, byte for byte as show-status.c and manager.c build it:
    /// the first ephemeral status line ends in `\n`; each update begins with
    /// ANSI_REVERSE_LINEFEED "\r" ANSI_ERASE_TO_END_OF_LINE, then the cylon
    /// in red and highlighted red; the final status line is followed by an
    /// ERASE_TO_END_OF_LINE at the start of the next line.
    const SYSTEMD_BOOT: &str = concat!(
        "[\x1b[0;32m  OK  \x1b[0m] Started \x1b[0;1;39msystemd-udevd.service\x1b[0m - Rule-based Manager for Device Events and Files.\n",
        "[\x1b[0;31m*     \x1b[0m] A start job is running for /dev/vda1 (1s / 1min 30s)\n",
        "\x1bM\r\x1b[K[\x1b[0;1;31m*\x1b[0m\x1b[0;31m*    \x1b[0m] A start job is running for /dev/vda1 (2s / 1min 30s)\n",
        "\x1bM\r\x1b[K[\x1b[0;31m*\x1b[0;1;31m*\x1b[0m\x1b[0;31m*   \x1b[0m] A start job is running for /dev/vda1 (2s / 1min 30s)\n",
        "\x1bM\r\x1b[K[ \x1b[0;31m*\x1b[0;1;31m*\x1b[0m\x1b[0;31m*  \x1b[0m] A start job is running for /dev/vda1 (3s / 1min 30s)\n",
        "\x1bM\r\x1b[K[\x1b[0;32m  OK  \x1b[0m] Found device \x1b[0;1;39mdev-vda1.device\x1b[0m - /dev/vda1.\n",
        "\x1b[K[\x1b[0;32m  OK  \x1b[0m] Reached target \x1b[0;1;39mlocal-fs.target\x1b[0m - Local File Systems.\n",
        "\x1b]0;debian login\x07Debian GNU/Linux 12 debian ttyS0\r\n",
    );

    fn screen_of(text: &str) -> Vec<String> {
        let mut screen = Screen::default();
        let mut out: Vec<String> = text.split('\n').filter_map(|l| screen.line(l)).collect();
        out.extend(screen.flush());
        out
    }

    #[test]
    fn the_systemd_spinner_leaves_only_the_final_status_lines() {
        assert_eq!(
            screen_of(SYSTEMD_BOOT),
            [
                "[  OK  ] Started systemd-udevd.service - Rule-based Manager for Device Events and Files.",
                "[  OK  ] Found device dev-vda1.device - /dev/vda1.",
                "[  OK  ] Reached target local-fs.target - Local File Systems.",
                "Debian GNU/Linux 12 debian ttyS0",
            ]
        );
    }

    #[test]
    fn a_spinner_that_is_still_running_is_held_not_logged_twice() {
        let mut screen = Screen::default();
        let lines: Vec<&str> = SYSTEMD_BOOT.split('\n').collect();
        assert_eq!(screen.line(lines[0]), None);
        assert_eq!(
            screen.line(lines[1]).as_deref(),
            Some(
                "[  OK  ] Started systemd-udevd.service - Rule-based Manager for Device Events and Files."
            )
        );
        assert_eq!(screen.line(lines[2]), None);
        assert_eq!(screen.line(lines[3]), None);
        // The caller gives up waiting: the latest version is what shows.
        assert_eq!(
            screen.flush().as_deref(),
            Some("[***   ] A start job is running for /dev/vda1 (2s / 1min 30s)")
        );
    }

    #[test]
    fn carriage_returns_and_cursor_moves_overwrite_as_on_a_screen() {
        let r = |s: &str| render(s).text;
        assert_eq!(r("progress 10%\rprogress 100%"), "progress 100%");
        assert_eq!(r("abcdef\rXY"), "XYcdef");
        assert_eq!(r("abcdef\rXY\x1b[K"), "XY");
        assert_eq!(r("abc\x08\x08Z"), "aZc");
        assert_eq!(r("abc\x1b[2DZ"), "aZc");
        assert_eq!(r("a\x1b[5Gb"), "a   b");
        assert_eq!(r("done\r\n"), "done");
        assert_eq!(r("\x1b[?25l\x1b[1;31merror\x1b[0m\x1b(B"), "error");
        assert_eq!(r("tab\there"), "tab     here");
        assert_eq!(r("bell\x07 and \x00nul"), "bell and nul");
        assert!(!render("plain").replaces_previous);
        assert!(render("\x1b[1Anew").replaces_previous);
        assert_eq!(r("\x1b[1Anew"), "new");
        // A truncated sequence at the end of a line eats nothing after it.
        assert_eq!(r("text\x1b["), "text");
        assert_eq!(r("text\x1b"), "text");
    }

    #[test]
    fn lines_that_render_empty_are_dropped() {
        assert_eq!(screen_of("\x1b[K\n\r\n\x1b[0m\nlast"), ["last"]);
    }
}
