// SPDX-License-Identifier: MPL-2.0

//! Small helpers shared by the benchmark programs (`scripts/bench.sh`): command-line
//! options, CPU time and memory of the current process, wall-clock time.

#![allow(dead_code)] // each program uses a different subset

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

/// Options as `--name=value` or `--name value`, a bare `--flag`, and positional words.
pub struct Args {
    options: HashMap<String, String>,
    pub positional: Vec<String>,
}

impl Args {
    /// Parses the process arguments; `flags` names the options that take no value.
    pub fn parse(flags: &[&str]) -> Args {
        let mut options = HashMap::new();
        let mut positional = Vec::new();
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let Some(name) = arg.strip_prefix("--") else {
                positional.push(arg);
                continue;
            };
            if let Some((name, value)) = name.split_once('=') {
                options.insert(name.to_owned(), value.to_owned());
            } else if flags.contains(&name) {
                options.insert(name.to_owned(), "true".to_owned());
            } else {
                let value = args
                    .next()
                    .unwrap_or_else(|| fail(&format!("--{name} needs a value")));
                options.insert(name.to_owned(), value);
            }
        }
        Args {
            options,
            positional,
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    pub fn flag(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v != "false" && v != "0")
    }

    pub fn string(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    /// A number option, or `default`; exits with a message when it does not parse.
    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> T {
        match self.get(name) {
            None => default,
            Some(text) => text
                .parse()
                .unwrap_or_else(|_| fail(&format!("--{name}: {text:?} is not a number"))),
        }
    }

    pub fn required(&self, name: &str) -> &str {
        self.get(name)
            .unwrap_or_else(|| fail(&format!("--{name} is required")))
    }
}

/// Prints `message` and exits with status 2.
pub fn fail(message: &str) -> ! {
    eprintln!("{}: {message}", program());
    std::process::exit(2)
}

fn program() -> String {
    std::env::args()
        .next()
        .and_then(|p| p.rsplit('/').next().map(str::to_owned))
        .unwrap_or_default()
}

/// User and system CPU seconds used so far by the whole process (all threads).
#[derive(Debug, Clone, Copy)]
pub struct CpuTime {
    pub user: f64,
    pub sys: f64,
}

impl CpuTime {
    pub fn now() -> CpuTime {
        // SAFETY: getrusage only writes the struct it is given.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        CpuTime {
            user: seconds(usage.ru_utime),
            sys: seconds(usage.ru_stime),
        }
    }

    /// CPU used between `earlier` and `self`.
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - earlier.user,
            sys: self.sys - earlier.sys,
        }
    }
}

/// What one thread of the process has used so far.
#[derive(Debug, Clone, Default)]
pub struct ThreadUse {
    pub name: String,
    /// Nanoseconds it ran (`schedstat`, exact where getrusage's ticks are not).
    pub ran_ns: u64,
    /// Times it went to sleep: voluntary context switches (`status`).
    pub sleeps: u64,
}

/// What each thread of the process has used so far, by thread id
/// (`/proc/self/task/*`).
pub fn thread_use() -> HashMap<u32, ThreadUse> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return HashMap::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| {
            let tid = task.file_name().to_str()?.parse().ok()?;
            let read = |file| std::fs::read_to_string(task.path().join(file)).ok();
            let name = read("comm")?.trim().to_owned();
            let ran_ns = read("schedstat")?.split_whitespace().next()?.parse().ok()?;
            let sleeps = read("status")?
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?
                .trim()
                .parse()
                .ok()?;
            Some((
                tid,
                ThreadUse {
                    name,
                    ran_ns,
                    sleeps,
                },
            ))
        })
        .collect()
}

/// CPU seconds and sleeps of each kind of thread since `earlier` (a [`thread_use`]), by
/// name with the digits left out, so that `videotestsrc0:src` and `videotestsrc1:src` add
/// up. Threads that ended meanwhile are not counted.
pub fn thread_use_since(earlier: &HashMap<u32, ThreadUse>) -> BTreeMap<String, (f64, u64)> {
    let mut by_kind = BTreeMap::new();
    for (tid, now) in thread_use() {
        let before = earlier.get(&tid).cloned().unwrap_or_default();
        let kind: String = now.name.chars().filter(|c| !c.is_ascii_digit()).collect();
        let entry = by_kind.entry(kind).or_insert((0.0, 0));
        entry.0 += now.ran_ns.saturating_sub(before.ran_ns) as f64 / 1e9;
        entry.1 += now.sleeps.saturating_sub(before.sleeps);
    }
    by_kind
}

/// A field of /proc/self/status in KiB (`VmRSS`, `VmHWM`), 0 when unreadable.
pub fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Nanoseconds since the UNIX epoch, the clock `mqttpublish add-sink-time` uses.
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The unsigned number after `"KEY":` in a JSON payload, looked for in its first 64 KiB
/// (where `mqttpublish` writes its metadata): `json_u64(payload, "sink_time")`.
pub fn json_u64(payload: &[u8], key: &str) -> Option<u64> {
    let pattern = format!("\"{key}\":");
    let pattern = pattern.as_bytes();
    let head = &payload[..payload.len().min(64 * 1024)];
    let at = head.windows(pattern.len()).position(|w| w == pattern)? + pattern.len();
    let digits: &[u8] = &head[at..];
    let end = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}
