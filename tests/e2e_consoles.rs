//! End to end: the consoles let in only who knows the secret. Real clients
//! in the cluster namespace: `virsh` over qemu+tcp with SASL, and minimal
//! SPICE and VNC handshakes in python3 (no GUI viewer is needed to see
//! whether a server accepts a ticket or a VNC response). Also: the secrets
//! never reach the log, `render` or a file others can read; the guest cannot
//! reach the console ports through its gateway; bad secret files fail with
//! a clear error.

mod support;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::sandbox::{POD_IP, Sandbox, output_text, require};
use support::vm::{GUEST_IP, RunningVm, example_config, start_vmpod};

const SPICE_PASSWORD: &str = "spice-Pw-7f3a9c2e";
/// qemu's VNC authentication takes at most 8 characters.
const VNC_PASSWORD: &str = "vN8c4x2Q";
const SASL_USER: &str = "operator";
const SASL_PASSWORD: &str = "sasl-Pw-9d1e55b0";
const SASL_OTHER_USER: &str = "auditor";
const SASL_OTHER_PASSWORD: &str = "sasl-Pw-other-31c7";
const DISPLAY_PORT: u16 = 5900;
const LIBVIRT_PORT: u16 = 16509;

/// A SPICE client up to the ticket: link to the main channel without
/// capabilities (so the server expects the RSA ticket right away), encrypt
/// `SPICE_TICKET` with the server's RSA key (OAEP, SHA-1, as spice-gtk
/// does), print the server's answer: `ticket result 0` is
/// SPICE_LINK_ERR_OK, 7 SPICE_LINK_ERR_PERMISSION_DENIED.
const SPICE_CLIENT: &str = r#"
import hashlib, os, socket, struct, sys

def recvn(s, n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit('closed by the server after %d of %d bytes' % (len(b), n))
        b += c
    return b

def der(buf, i):
    tag, n = buf[i], buf[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7f
        n = int.from_bytes(buf[i:i + k], 'big')
        i += k
    return buf[i:i + n], i + n

def rsa_key(spki):
    seq, _ = der(spki, 0)
    _, i = der(seq, 0)
    bits, _ = der(seq, i)
    rsa, _ = der(bits, 1)
    n, i = der(rsa, 0)
    e, _ = der(rsa, i)
    return int.from_bytes(n, 'big'), int.from_bytes(e, 'big')

def mgf1(seed, length):
    out = b''.join(hashlib.sha1(seed + c.to_bytes(4, 'big')).digest() for c in range(length // 20 + 1))
    return out[:length]

def oaep(n, e, m):
    k = (n.bit_length() + 7) // 8
    db = hashlib.sha1(b'').digest() + b'\0' * (k - len(m) - 42) + b'\1' + m
    seed = os.urandom(20)
    masked_db = bytes(a ^ b for a, b in zip(db, mgf1(seed, k - 21)))
    masked_seed = bytes(a ^ b for a, b in zip(seed, mgf1(masked_db, 20)))
    return pow(int.from_bytes(b'\0' + masked_seed + masked_db, 'big'), e, n).to_bytes(k, 'big')

s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
mess = struct.pack('<IBBIII', 0, 1, 0, 0, 0, 18)
s.sendall(struct.pack('<4sIII', b'REDQ', 2, 2, len(mess)) + mess)
magic, major, minor, size = struct.unpack('<4sIII', recvn(s, 16))
reply = recvn(s, size)
error = struct.unpack('<I', reply[:4])[0]
if magic != b'REDQ' or error:
    print('link refused: magic %r error %d' % (magic, error))
    sys.exit(0)
n, e = rsa_key(reply[4:166])
s.sendall(oaep(n, e, os.environ['SPICE_TICKET'].encode() + b'\0'))
print('ticket result %d' % struct.unpack('<I', recvn(s, 4))[0])
"#;

/// An RFB client up to the security result: prints the security types the
/// server offers (1 = None, 2 = VNC authentication); with `VNC_PASSWORD`
/// set it answers the DES challenge (openssl, since python has no DES) and
/// prints `auth result 0` (OK) or `auth result 1` (failed).
const VNC_CLIENT: &str = r#"
import os, socket, struct, subprocess, sys

def recvn(s, n):
    b = b''
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit('closed by the server after %d of %d bytes' % (len(b), n))
        b += c
    return b

s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
version = recvn(s, 12)
s.sendall(version)
count = recvn(s, 1)[0]
types = list(recvn(s, count))
print('version %s types %s' % (version.decode().strip(), ' '.join(map(str, types))))
password = os.environ.get('VNC_PASSWORD')
if password is None or 2 not in types:
    sys.exit(0)
s.sendall(b'\x02')
challenge = recvn(s, 16)
# VNC's DES key: the password padded to 8 bytes, each byte's bits mirrored.
key = bytes(int('{:08b}'.format(c)[::-1], 2) for c in (password.encode() + b'\0' * 8)[:8])
response = subprocess.run(
    ['openssl', 'enc', '-des-ecb', '-nopad', '-K', key.hex(), '-provider', 'legacy', '-provider', 'default'],
    input=challenge, stdout=subprocess.PIPE, check=True).stdout
s.sendall(response)
print('auth result %d' % struct.unpack('>I', recvn(s, 4))[0])
"#;

/// Client programs these tests run, beyond what every e2e test needs.
fn require_clients() {
    require(&[
        ("virsh", "libvirt-clients"),
        ("python3", "python3"),
        ("openssl", "openssl"),
        ("saslpasswd2", "sasl2-bin"),
        ("sasldblistusers2", "sasl2-bin"),
        ("timeout", "coreutils"),
    ]);
}

/// A private directory (0700), created if missing.
fn private_dir(dir: &Path) -> PathBuf {
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    }
    dir.to_path_buf()
}

/// Writes a secret file readable by its owner only.
fn write_secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    use std::io::Write;
    let path = dir.join(name);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("create secret file");
    file.write_all(text.as_bytes()).expect("write secret file");
    path
}

fn credentials_text() -> String {
    format!(
        "# users of libvirt's TCP console\n{SASL_USER}:{SASL_PASSWORD}\n\n{SASL_OTHER_USER}:{SASL_OTHER_PASSWORD}\n"
    )
}

/// The example config plus a `consoles:` section.
fn with_consoles(consoles: &str) -> String {
    example_config(|t| {
        // The pod port the spice test has the guest reach: the guest is
        // refused every pod port not listed.
        t.replace("  mtu: auto\n", "  mtu: auto\n  guest_access: [8099]\n")
            .replace(
                "lifecycle:\n",
                &format!("consoles:\n{consoles}lifecycle:\n"),
            )
    })
}

/// Starts vmpod with `consoles` in its config; `secrets` are written (0600)
/// into a private directory first, which `{secrets}` in `consoles` names.
/// It lies outside the sandbox, whose state directory exists only once
/// vmpod starts.
fn start_with_consoles(
    test: &str,
    consoles: &str,
    secrets: &[(&str, &str)],
) -> (RunningVm, ScratchDir) {
    require_clients();
    let dir = ScratchDir::new(test);
    for (name, text) in secrets {
        write_secret(&dir.0, name, text);
    }
    let config = with_consoles(&consoles.replace("{secrets}", dir.0.to_str().unwrap()));
    (start_vmpod(test, &config), dir)
}

/// A private directory under /tmp, removed when dropped (also when a test fails).
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(test: &str) -> ScratchDir {
        let dir =
            std::env::temp_dir().join(format!("vmpod-consoles-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        ScratchDir(private_dir(&dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn python(vm: &RunningVm, script: &str, port: u16, env: &[(&str, &str)]) -> String {
    let port = port.to_string();
    let mut cmd = vm
        .sandbox
        .in_cluster(&["timeout", "30", "python3", "-c", script, POD_IP, &port]);
    cmd.env_remove("SPICE_TICKET").env_remove("VNC_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run python3");
    let text = output_text(&out);
    assert!(out.status.success(), "the client failed: {text}");
    text.trim().to_string()
}

/// `virsh list --all` against the pod from the cluster, with `auth` as
/// LIBVIRT_AUTH_FILE, or no credentials at all.
fn virsh_list(vm: &RunningVm, auth: Option<&Path>) -> Output {
    let uri = format!("qemu+tcp://{POD_IP}:{LIBVIRT_PORT}/system");
    let home = vm.sandbox.state.join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = vm
        .sandbox
        .in_cluster(&["timeout", "30", "virsh", "-c", &uri, "list", "--all"]);
    // No auth.conf of the machine's user may answer for us.
    cmd.env_remove("LIBVIRT_AUTH_FILE")
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .stdin(Stdio::null());
    if let Some(auth) = auth {
        cmd.env("LIBVIRT_AUTH_FILE", auth);
    }
    cmd.output().expect("run virsh")
}

fn client_auth_file(vm: &RunningVm, name: &str, user: &str, password: &str) -> PathBuf {
    write_secret(
        &private_dir(&vm.sandbox.state.join("client")),
        name,
        &format!(
            "[credentials-vmpod]\nauthname={user}\npassword={password}\n\n[auth-libvirt-default]\ncredentials=vmpod\n"
        ),
    )
}

/// The guest fetches `url` through its fetch CGI: Ok(body) or Err(why).
fn fetch_via_guest(vm: &RunningVm, url: &str) -> Result<String, String> {
    let encoded: String = url
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let out = vm
        .sandbox
        .in_pod(&[
            "curl",
            "-s",
            "-m",
            "15",
            "-w",
            "\n%{http_code}",
            &format!("http://{GUEST_IP}:9080/cgi-bin/fetch?url={encoded}&timeout=5"),
        ])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    if code == "200" {
        Ok(body.to_string())
    } else {
        Err(format!("HTTP {code}: {body}"))
    }
}

/// Regular files under `root` that someone other than their owner may read
/// and that hold one of `secrets` (as is, or base64-encoded).
fn readable_files_holding(root: &Path, secrets: &[&str]) -> Vec<String> {
    let needles: Vec<(String, String)> = secrets
        .iter()
        .flat_map(|s| {
            [
                (s.to_string(), s.to_string()),
                (base64(s), format!("base64 of {s}")),
            ]
        })
        .collect();
    let mut found = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                todo.push(path);
                continue;
            }
            if !meta.is_file() || meta.permissions().mode() & 0o044 == 0 {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let text = String::from_utf8_lossy(&bytes);
            for (needle, what) in &needles {
                if text.contains(needle.as_str()) {
                    found.push(format!(
                        "{} (mode {:o}) holds {what}",
                        path.display(),
                        meta.permissions().mode() & 0o7777
                    ));
                }
            }
        }
    }
    found
}

fn base64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in s.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The secrets stay out of vmpod's log, `render`, process command lines
/// and every file others may read; the files that must hold them are 0600.
fn assert_secrets_kept(vm: &RunningVm, secrets: &[&str]) {
    let log = vm.sandbox.logs();
    for s in secrets {
        assert!(!log.contains(s), "a secret is in vmpod's log:\n{log}");
    }
    for what in ["plan", "domain"] {
        let out = Command::new(env!("CARGO_BIN_EXE_vmpod"))
            .args(["render", "--what", what])
            .arg(&vm.config_path)
            .output()
            .expect("run vmpod render");
        let text = output_text(&out);
        assert!(out.status.success(), "render failed: {text}");
        for s in secrets {
            assert!(!text.contains(s), "a secret is in `render --what {what}`");
        }
        assert!(text.contains("passwd=\"REDACTED\""), "{text}");
    }
    for pid in [vm.qemu_pid(), vm.daemon_pid("libvirtd")] {
        let pid = pid.expect("qemu and libvirtd run");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline);
        for s in secrets {
            assert!(
                !cmdline.contains(s),
                "a secret is on a command line: {cmdline}"
            );
        }
    }
    let leaks = readable_files_holding(&vm.sandbox.state, secrets);
    assert!(
        leaks.is_empty(),
        "files others can read hold a secret:\n{}",
        leaks.join("\n")
    );
}

/// libvirt keeps the domain definition (with the display password) in
/// /etc/libvirt/qemu and its live state in /run/libvirt/qemu: both must be
/// private, and must really hold the password (else the walk above proves
/// nothing about them).
fn assert_domain_files_private(vm: &RunningVm, password: &str) {
    let root = vm.sandbox.state.join("root");
    for file in [
        "etc-libvirt/qemu/example.xml",
        "run/libvirt/qemu/example.xml",
    ] {
        let path = root.join(file);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            text.contains(&format!("passwd=\"{password}\""))
                || text.contains(&format!("passwd='{password}'")),
            "{} does not hold the display password; where does libvirt keep it?",
            path.display()
        );
        assert_eq!(mode_of(&path), 0o600, "{}", path.display());
    }
}

#[test]
fn sasldb_holds_exactly_the_listed_users_and_is_private() {
    require_clients();
    let scratch = ScratchDir::new("sasldb");
    let dir = scratch.0.clone();
    let creds = write_secret(&dir, "creds", &credentials_text());
    let db = dir.join("passwd.db");
    let users = vmpod::consoles::read_credentials(&creds).expect("parse credentials");
    vmpod::consoles::build_sasldb(&users, &db).expect("build the sasldb");
    assert_eq!(mode_of(&db), 0o600);
    let list = |db: &Path| {
        let out = Command::new("sasldblistusers2")
            .arg("-f")
            .arg(db)
            .output()
            .expect("run sasldblistusers2");
        output_text(&out)
    };
    let listed = list(&db);
    assert!(
        listed.contains(&format!("{SASL_USER}@"))
            && listed.contains(&format!("{SASL_OTHER_USER}@")),
        "{listed}"
    );
    // A user removed from the file is gone after the next build.
    let creds = write_secret(&dir, "creds", &format!("{SASL_USER}:{SASL_PASSWORD}\n"));
    let users = vmpod::consoles::read_credentials(&creds).unwrap();
    vmpod::consoles::build_sasldb(&users, &db).unwrap();
    let listed = list(&db);
    assert!(listed.contains(&format!("{SASL_USER}@")), "{listed}");
    assert!(!listed.contains(SASL_OTHER_USER), "{listed}");
    assert_eq!(mode_of(&db), 0o600);
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        {
            let mut l = left;
            l.sort();
            l
        },
        ["creds", "passwd.db"],
        "the staging directory must be gone"
    );
}

#[test]
fn spice_and_libvirt_consoles_demand_their_credentials() {
    let (vm, _secrets) = start_with_consoles(
        "spice",
        &format!(
            "  display:\n    type: spice\n    port: {DISPLAY_PORT}\n    password_file: {{secrets}}/display\n  libvirt:\n    port: {LIBVIRT_PORT}\n    credentials_file: {{secrets}}/libvirt\n"
        ),
        &[
            ("display", &format!("{SPICE_PASSWORD}\n")),
            ("libvirt", &credentials_text()),
        ],
    );
    vm.wait_guest_http();

    // libvirt over TCP: the right credentials list the domain...
    let good = client_auth_file(&vm, "auth-good.conf", SASL_USER, SASL_PASSWORD);
    let out = virsh_list(&vm, Some(&good));
    let text = output_text(&out);
    assert!(out.status.success(), "virsh with credentials: {text}");
    assert!(
        text.contains("example") && text.contains("running"),
        "virsh with credentials: {text}"
    );
    let other = client_auth_file(&vm, "auth-other.conf", SASL_OTHER_USER, SASL_OTHER_PASSWORD);
    let out = virsh_list(&vm, Some(&other));
    assert!(
        out.status.success() && output_text(&out).contains("example"),
        "the second user: {}",
        output_text(&out)
    );
    // ...no credentials and wrong ones are refused.
    let out = virsh_list(&vm, None);
    let text = output_text(&out);
    println!("virsh without credentials: {text}");
    assert!(!out.status.success(), "virsh without credentials: {text}");
    assert!(
        text.contains("authentication failed") && !text.contains("running"),
        "virsh without credentials: {text}"
    );
    let wrong = client_auth_file(&vm, "auth-wrong.conf", SASL_USER, "not-the-password");
    let out = virsh_list(&vm, Some(&wrong));
    let text = output_text(&out);
    println!("virsh with a wrong password: {text}");
    assert!(!out.status.success(), "virsh with a wrong password: {text}");
    assert!(
        text.contains("authentication failed") && !text.contains("running"),
        "virsh with a wrong password: {text}"
    );

    // SPICE: the ticket decides.
    let spice = |ticket: &str| python(&vm, SPICE_CLIENT, DISPLAY_PORT, &[("SPICE_TICKET", ticket)]);
    assert_eq!(spice(SPICE_PASSWORD), "ticket result 0", "the right ticket");
    assert_eq!(spice(""), "ticket result 7", "no ticket: permission denied");
    assert_eq!(spice("spice-Pw-wrong"), "ticket result 7", "a wrong ticket");

    // The guest cannot use the consoles through its gateway or the pod's
    // address, though it reaches other pod ports there.
    let www = vm.sandbox.state.join("pod-www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("ok.txt"), "pod port reached\n").unwrap();
    let mut server = vm
        .sandbox
        .in_pod(&[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "0.0.0.0",
            "8099",
            "--directory",
        ])
        .arg(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a pod web server");
    let reached = vm.sandbox.wait_for(
        "the guest to reach a pod port",
        Duration::from_secs(20),
        || fetch_via_guest(&vm, "http://10.0.1.1:8099/ok.txt").ok(),
    );
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(reached, "pod port reached\n");
    for addr in ["10.0.1.1", POD_IP] {
        for port in [DISPLAY_PORT, LIBVIRT_PORT] {
            let got = fetch_via_guest(&vm, &format!("http://{addr}:{port}/"));
            println!("guest -> {addr}:{port}: {got:?}");
            assert!(
                matches!(&got, Err(e) if e.contains("Connection refused")),
                "the guest reached {addr}:{port}: {got:?}"
            );
        }
    }

    assert_domain_files_private(&vm, SPICE_PASSWORD);
    assert_eq!(
        mode_of(&vm.sandbox.state.join("root/etc-libvirt/passwd.db")),
        0o600
    );
    assert_secrets_kept(&vm, &[SPICE_PASSWORD, SASL_PASSWORD, SASL_OTHER_PASSWORD]);
}

#[test]
fn vnc_console_demands_vnc_authentication() {
    let (vm, _secrets) = start_with_consoles(
        "vnc",
        &format!(
            "  display:\n    type: vnc\n    port: {DISPLAY_PORT}\n    password_file: {{secrets}}/display\n"
        ),
        &[("display", VNC_PASSWORD)],
    );
    vm.wait_guest_http();
    let offered = python(&vm, VNC_CLIENT, DISPLAY_PORT, &[]);
    assert_eq!(
        offered, "version RFB 003.008 types 2",
        "only VNC authentication (2) may be offered, never None (1)"
    );
    let right = python(
        &vm,
        VNC_CLIENT,
        DISPLAY_PORT,
        &[("VNC_PASSWORD", VNC_PASSWORD)],
    );
    assert!(
        right.ends_with("auth result 0"),
        "the right password: {right}"
    );
    let wrong = python(
        &vm,
        VNC_CLIENT,
        DISPLAY_PORT,
        &[("VNC_PASSWORD", "wrong-pw")],
    );
    assert!(wrong.contains("auth result 1"), "a wrong password: {wrong}");
    assert_domain_files_private(&vm, VNC_PASSWORD);
    assert_secrets_kept(&vm, &[VNC_PASSWORD]);
}

// ---- bad input ----

fn check_strict(config: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmpod"))
        .args(["check", "--strict"])
        .arg(config)
        .output()
        .expect("run vmpod check");
    let text = output_text(&out);
    println!("vmpod check --strict {}:\n{text}", config.display());
    (out.status.code().unwrap_or(-1), text)
}

/// `vmpod run` as PID 1 of a fresh sandbox, with `prelude` run by its shell
/// first; expects exit 1 and returns the log. Nothing may be left behind.
fn run_expecting_failure(test: &str, prelude: &str, config: &Path) -> String {
    support::vm::require_e2e();
    support::guest::ensure_built();
    let mut sandbox = Sandbox::new(test);
    let script = format!(
        "{prelude}\nexec {} run --config {}",
        env!("CARGO_BIN_EXE_vmpod"),
        config.display()
    );
    sandbox.start_pid1(&["sh", "-c", &script], &[]);
    let code = sandbox.wait_pid1(Duration::from_secs(60));
    let logs = sandbox.logs();
    println!("vmpod run ({test}):\n{logs}");
    assert_eq!(code, Some(1), "expected exit 1:\n{logs}");
    let out = sandbox
        .in_pod(&["sh", "-c", "nft list ruleset; ip -br link; ip rule"])
        .output()
        .unwrap();
    let leftovers = output_text(&out);
    assert!(
        !leftovers.contains("vmpod") && !leftovers.contains("virbr0"),
        "a failed start must leave nothing behind:\n{leftovers}"
    );
    assert!(
        !logs.contains("daemon ready"),
        "nothing may start before the check:\n{logs}"
    );
    logs
}

/// A scratch directory with a config whose `consoles:` is `consoles`
/// (`{dir}` stands for the directory). The guest's kernel is named by its
/// path on the machine, so that `check --strict` finds it too.
fn bad_input(test: &str, consoles: &str) -> (ScratchDir, PathBuf) {
    let images = support::guest::ensure_built();
    let dir = ScratchDir::new(test);
    let config = dir.0.join("vm.yaml");
    let text = with_consoles(&consoles.replace("{dir}", dir.0.to_str().unwrap()))
        .replace("/var/lib/vmpod/images/test-guest", images.to_str().unwrap());
    std::fs::write(&config, text).unwrap();
    (dir, config)
}

#[test]
fn a_missing_or_empty_password_file_is_a_clear_error() {
    let (scratch, config) = bad_input(
        "pw",
        "  display:\n    type: spice\n    password_file: {dir}/display\n",
    );
    let dir = scratch.0.clone();
    let file = dir.join("display");
    let (code, text) = check_strict(&config);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("consoles.display.password_file")
            && text.contains(&format!("`{}` does not exist", file.display())),
        "{text}"
    );
    let logs = run_expecting_failure("pwmissing", "", &config);
    assert!(
        logs.contains("consoles.display.password_file") && logs.contains("does not exist"),
        "{logs}"
    );

    write_secret(&dir, "display", "\n");
    let (code, text) = check_strict(&config);
    assert_eq!(code, 2, "{text}");
    let want = format!(
        "consoles.display.password_file: {} is empty",
        file.display()
    );
    assert!(text.contains(&want), "{text}");
    let logs = run_expecting_failure("pwempty", "", &config);
    assert!(logs.contains(&want), "{logs}");
}

#[test]
fn a_malformed_credentials_file_is_a_clear_error_without_the_password() {
    let (scratch, config) = bad_input("creds", "  libvirt:\n    credentials_file: {dir}/libvirt\n");
    let dir = scratch.0.clone();
    let file = dir.join("libvirt");
    let cases = [
        (
            format!("# users\n{SASL_USER}:{SASL_PASSWORD}\n{SASL_OTHER_PASSWORD}\n"),
            format!("{}:3: not a `user:password` line", file.display()),
        ),
        (
            format!("{SASL_USER}:\n"),
            format!("{}:1: user `{SASL_USER}` has no password", file.display()),
        ),
        (
            "# nobody yet\n\n".to_string(),
            format!("{} holds no `user:password` line", file.display()),
        ),
    ];
    for (text, want) in &cases {
        write_secret(&dir, "libvirt", text);
        let (code, out) = check_strict(&config);
        assert_eq!(code, 2, "{out}");
        assert!(
            out.contains(&format!("consoles.libvirt.credentials_file: {want}")),
            "{out}"
        );
        for secret in [SASL_PASSWORD, SASL_OTHER_PASSWORD] {
            assert!(!out.contains(secret), "the password is in: {out}");
        }
    }
    // The first case at run: exit 1, the same message, no password.
    write_secret(&dir, "libvirt", &cases[0].0);
    let logs = run_expecting_failure("credsbad", "", &config);
    assert!(logs.contains(&cases[0].1), "{logs}");
    assert!(
        !logs.contains(SASL_OTHER_PASSWORD) && !logs.contains(SASL_PASSWORD),
        "{logs}"
    );
}

#[test]
fn a_vnc_password_longer_than_8_characters_is_refused_without_printing_it() {
    let long = "vnc-longer-than-8";
    let (scratch, config) = bad_input(
        "vnclong",
        "  display:\n    type: vnc\n    password_file: {dir}/display\n",
    );
    let dir = scratch.0.clone();
    write_secret(&dir, "display", long);
    let (code, text) = check_strict(&config);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("consoles.display.password_file")
            && text.contains("longer than 8 characters"),
        "{text}"
    );
    assert!(!text.contains(long), "{text}");
    // The same password is fine for SPICE.
    let spice = std::fs::read_to_string(&config)
        .unwrap()
        .replace("type: vnc", "type: spice");
    std::fs::write(&config, spice).unwrap();
    let (code, text) = check_strict(&config);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn an_occupied_display_port_names_port_and_field_and_insecure_warns() {
    let (_scratch, config) = bad_input(
        "busy",
        &format!("  display:\n    type: vnc\n    port: {DISPLAY_PORT}\n    insecure: true\n"),
    );
    let logs = run_expecting_failure(
        "busydisplay",
        &format!(
            "python3 -c 'import socket,time; s=socket.socket(); s.bind((\"0.0.0.0\",{DISPLAY_PORT})); s.listen(); time.sleep(600)' &\nsleep 0.5"
        ),
        &config,
    );
    assert!(
        logs.contains(&format!("port {DISPLAY_PORT}"))
            && logs.contains("consoles.display.port")
            && logs.contains("in use"),
        "{logs}"
    );
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains("insecure: true")),
        "an insecure display must start with a warning:\n{logs}"
    );
}
