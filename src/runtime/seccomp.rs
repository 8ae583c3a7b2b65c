//! The default seccomp filter of workspace processes: like Docker's default profile, it allows
//! every system call except a short deny list of calls that a development workspace has no use
//! for and that widen the kernel's attack surface or reach outside the sandbox (kernel keyrings,
//! BPF, modules, mounts, clocks, new namespaces, terminal injection...).
//!
//! A denied call fails with `EPERM` instead of killing the process: tools probe for features
//! (`unshare`, `keyctl`, `perf_event_open`...) and fall back when refused, while a kill would turn
//! an innocent probe into a crash that is hard to diagnose inside a workspace. The filter is
//! defence in depth; the namespaces and dropped capabilities of bubblewrap are the first line.
//!
//! The launcher hands the compiled program to `bwrap --seccomp 0` as bubblewrap's standard input
//! (std opens every file close-on-exec and the crate has no `unsafe` to clear that, but fd 0
//! survives `exec`). Bubblewrap reads it to the end while parsing its arguments, closes fd 0 and
//! installs the filter just before it executes the workspace's program, after it has built the
//! sandbox, so its own `unshare` and `mount` calls are not affected. The program then starts
//! with fd 0 closed (a Rust program reopens it on `/dev/null` before `main`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch, sock_filter,
};

/// The system calls refused with `EPERM`. Names that do not exist on the running architecture
/// (`iopl`, `_sysctl`... on aarch64) are skipped: they cannot be called there.
///
/// `ioctl` is only refused for the terminal-injection requests `TIOCSTI` and `TIOCLINUX`, and
/// `clone` only when it asks for a new namespace; every other use is allowed. `clone3` is not in
/// this list: it fails with `ENOSYS` (see [`default_filter_bytes`]).
pub const DENIED: &[&str] = &[
    // Kernel keyrings are not namespaced: keys of other users of the host could be reached.
    "keyctl",
    "add_key",
    "request_key",
    // Large, often-exploited kernel interfaces, and a way to observe other processes.
    "bpf",
    "perf_event_open",
    "userfaultfd",
    // The kernel itself: modules, kexec, reboot, swap, logs, accounting, quotas.
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "get_kernel_syms",
    "query_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "syslog",
    "lookup_dcookie",
    "nfsservctl",
    "uselib",
    "ustat",
    "sysfs",
    "_sysctl",
    "vhangup",
    // Mounts, with the new mount API, which would otherwise bypass a refused `mount`.
    "mount",
    "umount2",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    // File handles open any file of a mount, bypassing the path checks (the "shocker" escape).
    "open_by_handle_at",
    "name_to_handle_at",
    // The clocks are shared by the whole host.
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    // Raw port I/O.
    "iopl",
    "ioperm",
    // New namespaces inside a workspace are refused (also `clone` with a CLONE_NEW* flag).
    "setns",
    "unshare",
    // Conditional: see the doc comment.
    "ioctl",
    "clone",
];

/// `ioctl` requests that push input into a terminal (`TIOCSTI` fakes typed characters,
/// `TIOCLINUX` subcode 2 pastes the console selection): a workspace process must not type
/// commands into a terminal of someone else. Same values on x86_64 and aarch64.
const DENIED_IOCTLS: &[u64] = &[0x5412, 0x541C];

/// `CLONE_NEWNS`, `CLONE_NEWCGROUP`, `CLONE_NEWUTS`, `CLONE_NEWIPC`, `CLONE_NEWUSER`,
/// `CLONE_NEWPID`, `CLONE_NEWNET`: `clone` with any of them creates a namespace, which is what
/// refusing `unshare` and `setns` is about. (`CLONE_NEWTIME` only exists for `unshare`/`clone3`.)
const CLONE_NAMESPACE_FLAGS: &[u64] = &[
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("no seccomp filter for the {0} architecture (supported: x86_64, aarch64)")]
    UnsupportedArch(String),
    #[error("cannot compile the seccomp filter: {0}")]
    Compile(#[from] BackendError),
    #[error("cannot write the seccomp filter to {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the filter needs to know about an architecture. The syscall numbers are written out
/// here because the crate does not depend on `libc` (checked against the kernel headers).
struct Arch {
    target: TargetArch,
    /// `AUDIT_ARCH_*`, which the kernel passes in `seccomp_data.arch`.
    audit: u32,
    /// x86_64 also accepts x32 calls, numbered from `__X32_SYSCALL_BIT`.
    x32: bool,
    clone3: u32,
    syscalls: &'static [(&'static str, i64)],
}

const X86_64: Arch = Arch {
    target: TargetArch::x86_64,
    audit: 62 | 0x8000_0000 | 0x4000_0000,
    x32: true,
    clone3: 435,
    syscalls: &[
        ("keyctl", 250),
        ("add_key", 248),
        ("request_key", 249),
        ("bpf", 321),
        ("perf_event_open", 298),
        ("userfaultfd", 323),
        ("kexec_load", 246),
        ("kexec_file_load", 320),
        ("init_module", 175),
        ("finit_module", 313),
        ("delete_module", 176),
        ("create_module", 174),
        ("get_kernel_syms", 177),
        ("query_module", 178),
        ("reboot", 169),
        ("swapon", 167),
        ("swapoff", 168),
        ("acct", 163),
        ("quotactl", 179),
        ("quotactl_fd", 443),
        ("syslog", 103),
        ("lookup_dcookie", 212),
        ("nfsservctl", 180),
        ("uselib", 134),
        ("ustat", 136),
        ("sysfs", 139),
        ("_sysctl", 156),
        ("vhangup", 153),
        ("mount", 165),
        ("umount2", 166),
        ("pivot_root", 155),
        ("fsopen", 430),
        ("fsconfig", 431),
        ("fsmount", 432),
        ("fspick", 433),
        ("move_mount", 429),
        ("open_tree", 428),
        ("mount_setattr", 442),
        ("open_by_handle_at", 304),
        ("name_to_handle_at", 303),
        ("settimeofday", 164),
        ("clock_settime", 227),
        ("clock_adjtime", 305),
        ("adjtimex", 159),
        ("iopl", 172),
        ("ioperm", 173),
        ("setns", 308),
        ("unshare", 272),
        ("ioctl", 16),
        ("clone", 56),
    ],
};

/// The generic table (`asm-generic/unistd.h`); the legacy calls do not exist there.
const AARCH64: Arch = Arch {
    target: TargetArch::aarch64,
    audit: 183 | 0x8000_0000 | 0x4000_0000,
    x32: false,
    clone3: 435,
    syscalls: &[
        ("keyctl", 219),
        ("add_key", 217),
        ("request_key", 218),
        ("bpf", 280),
        ("perf_event_open", 241),
        ("userfaultfd", 282),
        ("kexec_load", 104),
        ("kexec_file_load", 294),
        ("init_module", 105),
        ("finit_module", 273),
        ("delete_module", 106),
        ("reboot", 142),
        ("swapon", 224),
        ("swapoff", 225),
        ("acct", 89),
        ("quotactl", 60),
        ("quotactl_fd", 443),
        ("syslog", 116),
        ("lookup_dcookie", 18),
        ("nfsservctl", 42),
        ("vhangup", 58),
        ("mount", 40),
        ("umount2", 39),
        ("pivot_root", 41),
        ("fsopen", 430),
        ("fsconfig", 431),
        ("fsmount", 432),
        ("fspick", 433),
        ("move_mount", 429),
        ("open_tree", 428),
        ("mount_setattr", 442),
        ("open_by_handle_at", 265),
        ("name_to_handle_at", 264),
        ("settimeofday", 170),
        ("clock_settime", 112),
        ("clock_adjtime", 266),
        ("adjtimex", 171),
        ("setns", 268),
        ("unshare", 97),
        ("ioctl", 29),
        ("clone", 220),
    ],
};

fn arch() -> Result<&'static Arch, SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(&X86_64),
        "aarch64" => Ok(&AARCH64),
        other => Err(SeccompError::UnsupportedArch(other.to_string())),
    }
}

/// The compiled BPF program (raw `struct sock_filter` bytes, 8 bytes per instruction, native
/// endian) that `bwrap --seccomp FD` reads.
///
/// Besides [`DENIED`] (`EPERM`), two things fail with `ENOSYS`, as on a kernel without them:
/// `clone3`, whose flags sit behind a pointer a filter cannot read, so it could create
/// namespaces unseen (glibc, Go and Rust fall back to `clone`, which is checked; Docker does the
/// same); and on x86_64 every x32-ABI call, which would otherwise reach the denied calls under
/// other numbers (Debian boots with x32 disabled anyway). A call made for another architecture
/// (32-bit `int 0x80` on x86_64) kills the process: its numbers differ, so the deny list cannot
/// apply, and 32-bit programs have no place in a workspace.
pub fn default_filter_bytes() -> Result<Vec<u8>, SeccompError> {
    let arch = arch()?;
    let mut program = enosys_prefix(arch);
    program.extend(deny_list(arch)?);
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for insn in &program {
        bytes.extend_from_slice(&insn.code.to_ne_bytes());
        bytes.push(insn.jt);
        bytes.push(insn.jf);
        bytes.extend_from_slice(&insn.k.to_ne_bytes());
    }
    Ok(bytes)
}

/// The deny list, compiled by seccompiler: allow by default, `EPERM` on a match.
fn deny_list(arch: &Arch) -> Result<BpfProgram, SeccompError> {
    let number = |name: &str| arch.syscalls.iter().find(|(n, _)| *n == name).map(|s| s.1);
    // Both requests and flags are 32-bit values to the kernel (`unsigned int` request,
    // `lower_32_bits(clone_flags)`): comparing the low half only (Dword) means that junk in the
    // upper half cannot sneak a TIOCSTI past the filter (CVE-2019-10063 in flatpak).
    let arg_is = |index: u8, op: SeccompCmpOp, value: u64| -> Result<SeccompRule, BackendError> {
        SeccompRule::new(vec![SeccompCondition::new(
            index,
            SeccompCmpArgLen::Dword,
            op,
            value,
        )?])
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for name in DENIED {
        let Some(nr) = number(name) else { continue };
        let chain = match *name {
            "ioctl" => DENIED_IOCTLS
                .iter()
                .map(|&req| arg_is(1, SeccompCmpOp::Eq, req))
                .collect::<Result<Vec<_>, _>>()?,
            "clone" => CLONE_NAMESPACE_FLAGS
                .iter()
                .map(|&flag| arg_is(0, SeccompCmpOp::MaskedEq(flag), flag))
                .collect::<Result<Vec<_>, _>>()?,
            // An empty chain matches every call.
            _ => Vec::new(),
        };
        rules.insert(nr, chain);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(EPERM),
        arch.target,
    )?;
    Ok(BpfProgram::try_from(filter)?)
}

// Classic BPF opcodes (linux/bpf_common.h).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// Offsets in `struct seccomp_data`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

fn insn(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Hand-written head of the program for what seccompiler cannot express (one match action per
/// filter, exact numbers only): `clone3` and x32 calls return `ENOSYS`. For a foreign
/// architecture it falls through to seccompiler's own check, which kills. All jumps are
/// relative and forward, so prepending does not disturb the compiled part.
fn enosys_prefix(arch: &Arch) -> Vec<sock_filter> {
    // Each test jumps to the ENOSYS return when true.
    let mut tests = Vec::new();
    if arch.x32 {
        tests.push((BPF_JGE_K, X32_SYSCALL_BIT));
    }
    tests.push((BPF_JEQ_K, arch.clone3));
    let n = tests.len() as u8;
    let mut p = vec![
        insn(BPF_LD_W_ABS, DATA_ARCH, 0, 0),
        // Another architecture: skip the tests, the ENOSYS return and the number load.
        insn(BPF_JEQ_K, arch.audit, 0, n + 2),
        insn(BPF_LD_W_ABS, DATA_NR, 0, 0),
    ];
    for (i, (code, k)) in (0u8..).zip(tests) {
        let after = n - 1 - i;
        // The last test skips the return when false; the others go on to the next test.
        let jf = if after == 0 { 1 } else { 0 };
        p.push(insn(code, k, after, jf));
    }
    p.push(insn(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS, 0, 0));
    p
}

/// Writes it to `path` (mode 0644), for the launcher to hand to bwrap. The file is replaced
/// atomically, so a sandbox starting at the same moment never reads half a filter. It is not
/// synced: each start writes it again just before its sandbox reads it (a sync cost 1-3 ms of
/// every start).
pub fn write_default_filter(path: &Path) -> Result<(), SeccompError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let bytes = default_filter_bytes()?;
    let err = |source| SeccompError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(
        ".tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)?;
        // The umask may have taken bits away from the mode given to open.
        f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        // No fsync: every start writes it anew before its sandbox reads it.
        f.write_all(&bytes)?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::fs::File;
    use std::process::{Command, Stdio};

    #[test]
    fn filter_is_whole_instructions() {
        let bytes = default_filter_bytes().unwrap();
        assert!(!bytes.is_empty());
        assert_eq!(bytes.len() % 8, 0);
        // The kernel accepts at most 4096 instructions.
        assert!(bytes.len() / 8 < 4096);
    }

    #[test]
    fn tables_cover_the_deny_list() {
        for arch in [&X86_64, &AARCH64] {
            for (name, _) in arch.syscalls {
                assert!(DENIED.contains(name), "{name} is numbered but not denied");
            }
            let mut numbers: Vec<i64> = arch.syscalls.iter().map(|s| s.1).collect();
            numbers.sort_unstable();
            numbers.dedup();
            assert_eq!(numbers.len(), arch.syscalls.len(), "a number is repeated");
            assert!(!arch.syscalls.iter().any(|s| s.1 == arch.clone3 as i64));
        }
        // Every name exists on x86_64; aarch64 only lacks the legacy calls.
        for name in DENIED {
            assert!(X86_64.syscalls.iter().any(|s| s.0 == *name), "{name}");
        }
        assert_eq!(DENIED.len() - AARCH64.syscalls.len(), 9);
    }

    #[test]
    fn prefix_jumps_land_on_the_compiled_filter() {
        for arch in [&X86_64, &AARCH64] {
            let p = enosys_prefix(arch);
            let ret = p.len() - 1;
            assert_eq!(p[ret].k, SECCOMP_RET_ERRNO | ENOSYS);
            for (i, ins) in p.iter().enumerate() {
                if ins.code == BPF_JEQ_K || ins.code == BPF_JGE_K {
                    let t = i + 1 + ins.jt as usize;
                    let f = i + 1 + ins.jf as usize;
                    if i == 1 {
                        // The arch check: true goes on, false skips the whole prefix.
                        assert_eq!((t, f), (2, p.len()));
                    } else {
                        assert_eq!(t, ret);
                        assert!(f < ret || f == p.len());
                    }
                }
            }
        }
    }

    #[test]
    fn writes_the_file_with_mode_0644() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seccomp.bpf");
        write_default_filter(&path).unwrap();
        write_default_filter(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            default_filter_bytes().unwrap()
        );
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn bwrap() -> &'static str {
        let path = "/usr/bin/bwrap";
        assert!(
            Path::new(path).exists(),
            "bubblewrap is missing: apt-get install -y bubblewrap"
        );
        path
    }

    /// The probe run inside the sandbox: prints `name=result` lines.
    fn probe() -> String {
        let nr = |name: &str| {
            arch()
                .unwrap()
                .syscalls
                .iter()
                .find(|s| s.0 == name)
                .unwrap()
                .1
        };
        let x32 = if arch().unwrap().x32 { "True" } else { "False" };
        format!(
            r#"
import ctypes, errno, fcntl, os, socket, struct, subprocess, termios, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *a):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(x) for x in a])
    return "%d,%d" % (r, ctypes.get_errno())
def out(k, v):
    print("%s=%s" % (k, v), flush=True)
try:
    os.fstat(0); out("fd0", "open")
except OSError as e:
    out("fd0", errno.errorcode[e.errno])
out("keyctl", sc({keyctl}, 0, 0, 0, 0, 0))
out("mount", sc({mount}, 0, 0, 0, 0, 0))
out("unshare", sc({unshare}, 0x10000000))
out("clone3", sc(435, 0, 0))
if {x32}:
    out("x32_getpid", sc(0x40000000 | 39))
r = libc.syscall(ctypes.c_long({clone}), ctypes.c_ulong(0x10000000 | 17), 0, 0, 0, 0)
if r == 0:
    os._exit(0)
if r > 0:
    os.waitpid(r, 0)
out("clone_newuser", "%d,%d" % (r if r < 0 else 0, ctypes.get_errno() if r < 0 else 0))
m, s = os.openpty()
out("tiocgwinsz", len(fcntl.ioctl(s, termios.TIOCGWINSZ, b"\0" * 8)))
rd, wr = os.pipe()
pid = os.fork()
if pid == 0:
    # TIOCSTI on a terminal that is not the caller's controlling one fails in the kernel
    # anyway: make it the controlling terminal so that only the filter can refuse it.
    os.setsid()
    fcntl.ioctl(s, termios.TIOCSCTTY, 0)
    res = []
    try:
        fcntl.ioctl(s, termios.TIOCSTI, b"x"); res.append("ok")
    except OSError as e:
        res.append(errno.errorcode[e.errno])
    buf = ctypes.create_string_buffer(b"y")
    res.append(sc({ioctl}, s, 0x100005412, ctypes.addressof(buf)))
    os.write(wr, (" ".join(res)).encode())
    os._exit(0)
os.close(wr)
os.waitpid(pid, 0)
tiocsti, hi = os.read(rd, 100).decode().split(" ")
out("tiocsti", tiocsti)
out("tiocsti_high_bits", hi)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
c = socket.create_connection(srv.getsockname()); a, _ = srv.accept(); c.sendall(b"ping")
out("loopback", a.recv(4).decode())
t = threading.Thread(target=lambda: out("thread", "ok")); t.start(); t.join()
out("subprocess", subprocess.run(["sh", "-c", "true"]).returncode)
"#,
            keyctl = nr("keyctl"),
            mount = nr("mount"),
            unshare = nr("unshare"),
            clone = nr("clone"),
            ioctl = nr("ioctl"),
        )
    }

    const SHELL: &str = r#"
out=$(unshare -U true 2>&1); echo "unshare_cmd=$?:$out"
ls / >/dev/null && echo ls=ok
sh -c true && echo exec=ok
python3 -c 'print("python=" + str(1))'
python3 -c "$1"
"#;

    /// Runs the probe in a bubblewrap sandbox, with the filter given as standard input when
    /// `filter` is set, as the launcher does; returns the probe's answers.
    fn run_probe(filter: Option<&Path>, uid: Option<u32>) -> HashMap<String, String> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(bwrap());
        cmd.args([
            "--unshare-all",
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
        ]);
        match filter {
            Some(path) => {
                cmd.args(["--seccomp", "0"]);
                cmd.stdin(File::open(path).unwrap());
            }
            None => {
                cmd.stdin(Stdio::null());
            }
        }
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.args(["--", "/bin/sh", "-c", SHELL, "sh", &probe()])
            .current_dir("/");
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "sandbox failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
        let answers: HashMap<String, String> = stdout
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        eprintln!("{answers:#?}\nstderr:\n{stderr}");
        answers
    }

    fn check_filtered(a: &HashMap<String, String>) {
        let get = |k: &str| a.get(k).map(String::as_str).unwrap_or("<missing>");
        // Refused with EPERM.
        assert!(
            get("unshare_cmd").starts_with("1:"),
            "{}",
            get("unshare_cmd")
        );
        assert!(get("unshare_cmd").contains("Operation not permitted"));
        assert_eq!(get("keyctl"), "-1,1");
        assert_eq!(get("mount"), "-1,1");
        assert_eq!(get("unshare"), "-1,1");
        assert_eq!(get("clone_newuser"), "-1,1");
        assert_eq!(get("tiocsti"), "EPERM");
        assert_eq!(get("tiocsti_high_bits"), "-1,1");
        // Refused with ENOSYS.
        assert_eq!(get("clone3"), "-1,38");
        if arch().unwrap().x32 {
            assert_eq!(get("x32_getpid"), "-1,38");
        }
        // Ordinary work goes on.
        assert_eq!(get("ls"), "ok");
        assert_eq!(get("exec"), "ok");
        assert_eq!(get("python"), "1");
        assert_eq!(get("tiocgwinsz"), "8");
        assert_eq!(get("loopback"), "ping");
        assert_eq!(get("thread"), "ok");
        assert_eq!(get("subprocess"), "0");
        // bwrap consumed and closed its standard input.
        assert_eq!(get("fd0"), "EBADF");
    }

    #[test]
    fn bwrap_seccomp_0_applies_the_filter_from_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seccomp.bpf");
        write_default_filter(&path).unwrap();
        check_filtered(&run_probe(Some(&path), None));
    }

    #[test]
    fn bwrap_seccomp_0_works_for_an_unprivileged_launcher() {
        // The launcher drops to the workspace's uid before it becomes bubblewrap.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seccomp.bpf");
        write_default_filter(&path).unwrap();
        check_filtered(&run_probe(Some(&path), Some(65534)));
    }

    #[test]
    fn without_the_filter_the_probes_are_not_refused() {
        // Proves that the checks above can fail: the same probe, no filter.
        let a = run_probe(None, None);
        let get = |k: &str| a.get(k).map(String::as_str).unwrap_or("<missing>");
        assert_ne!(get("keyctl"), "-1,1");
        assert_ne!(get("keyctl"), "<missing>");
        assert_eq!(get("tiocsti"), "ok");
        // The kernel ignores the upper half of the request: this is a real TIOCSTI.
        assert_eq!(get("tiocsti_high_bits"), "0,0");
        assert!(
            get("unshare_cmd").starts_with("0:"),
            "{}",
            get("unshare_cmd")
        );
        assert_eq!(get("unshare"), "0,0");
        assert_eq!(get("fd0"), "open");
        assert_ne!(get("clone3"), "-1,38");
        assert_eq!(get("thread"), "ok");
    }
}
