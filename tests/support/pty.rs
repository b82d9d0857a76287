//! A Python driver for `vmpod console` in a pseudo-terminal, as
//! `kubectl exec -it` gives one: the tests add only what they type and
//! expect after this prelude.

/// Defines `spawn(shell_command)` (runs it on a new pty), `expect(pattern,
/// timeout)` (reads until `pattern` or exits printing the screen so far),
/// `wake(prompt, tries)` (Enter until the guest redraws `prompt`) and
/// `out`, everything the terminal showed.
const PRELUDE: &str = r##"
import os, pty, select, sys, time
out = b""
fd = None
def spawn(shell_command):
    global fd
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp("sh", ["sh", "-c", shell_command])
def expect(pattern, timeout):
    global out
    end = time.time() + timeout
    while pattern not in out:
        if time.time() > end:
            sys.stdout.write(out.decode(errors="replace"))
            sys.exit("timed out waiting for %r" % pattern)
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                sys.stdout.write(out.decode(errors="replace"))
                sys.exit("the terminal closed waiting for %r" % pattern)
            out += data
def wake(prompt, tries):
    for _ in range(tries):
        os.write(fd, b"\r")
        try:
            expect(prompt, 3)
            break
        except SystemExit:
            pass
"##;

/// The prelude followed by `body`, for `python3 -c`.
pub fn console_driver(body: &str) -> String {
    format!("{PRELUDE}{body}")
}
