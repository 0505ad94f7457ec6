//! A gate's tags and phase, written together. The tags (trusted.gov.*
//! xattrs on its cgroup, [`Tags`]) are what outlives a daemon; the phase is
//! what its owner acts on. Each setter here writes the xattr and then the value kept
//! in memory, in one call, and [`Record::enter`] is the one way into a phase:
//! it writes exactly the tags that say that phase, so what a restarted
//! daemon reads back ([`phase_of`]) is what was entered. The daemon's owners,
//! root's direct mode and hibernation all write through a `Record`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cgroup::{Cgroup, CgroupError};
use crate::reaper::Phase;

/// The name of one tag (`trusted.gov.<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tag {
    Project,
    Session,
    OwnerUid,
    OwnerPid,
    OwnerStart,
    MainPid,
    MainStart,
    Created,
    MaxRuntime,
    Pinned,
    LastActive,
    Frozen,
    FrozenManual,
    Orphaned,
    Reaping,
    OnMainExit,
    MainExited,
    /// The gate's main process is a keeper (`gov spawn --hibernate`).
    Keeper,
    /// Where it is in hibernation (see `record::phase_of`).
    Hibernate,
    /// Input woke it: suspended again at this time unless active.
    Woken,
    /// When input last woke it.
    LastInput,
    /// The inode of the stdin its host gave it.
    Stdin,
}

impl Tag {
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Project => "project",
            Tag::Session => "session",
            Tag::OwnerUid => "owner_uid",
            Tag::OwnerPid => "owner_pid",
            Tag::OwnerStart => "owner_start",
            Tag::MainPid => "main_pid",
            Tag::MainStart => "main_start",
            Tag::Created => "created",
            Tag::MaxRuntime => "max_runtime",
            Tag::Pinned => "pinned",
            Tag::LastActive => "last_active",
            Tag::Frozen => "frozen",
            Tag::FrozenManual => "frozen_manual",
            Tag::Orphaned => "orphaned",
            Tag::Reaping => "reaping",
            Tag::OnMainExit => "on_main_exit",
            Tag::MainExited => "main_exited",
            Tag::Keeper => "keeper",
            Tag::Hibernate => "hibernate",
            Tag::Woken => "woken",
            Tag::LastInput => "last_input",
            Tag::Stdin => "stdin",
        }
    }

    /// Writes this tag, or removes it when `value` is None.
    pub fn set(self, cg: &Cgroup, value: Option<&str>) -> Result<(), CgroupError> {
        match value {
            Some(v) => cg.write_tag(self.as_str(), v),
            None => cg.remove_tag(self.as_str()),
        }
    }
}

/// The tags of a gate, as stored in trusted.gov.* xattrs. Times are unix
/// milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Tags {
    pub project: String,
    pub session: String,
    pub owner_uid: u32,
    /// The process that asked for the gate (the host); its exit orphans it.
    pub owner_pid: Option<u32>,
    pub owner_start: Option<u64>,
    /// The gate's main process (the one that exec'd CMD): it gets
    /// stop_signal first, so it can shut down cleanly.
    pub main_pid: Option<u32>,
    pub main_start: Option<u64>,
    pub created_ms: u64,
    pub max_runtime_ms: Option<u64>,
    pub pinned: bool,
    /// Persisted so a daemon restart does not reset every idle clock.
    pub last_active_ms: Option<u64>,
    pub frozen_ms: Option<u64>,
    /// Frozen by a person (`gov freeze`), not by the reaper.
    pub frozen_manual: bool,
    pub orphaned_ms: Option<u64>,
    /// Reap intent ("stop:idle:<ms>", "kill:orphan"), so a restarted daemon
    /// finishes a teardown it had begun.
    pub reaping: Option<String>,
    /// Asked at spawn: stop the rest once the main process exits (true) or
    /// keep it (false); None: the policy decides.
    pub stop_on_main_exit: Option<bool>,
    /// When the main process exited.
    pub main_exited_ms: Option<u64>,
    /// Its main process is a keeper, its worker in `<gate>/w`: it can be
    /// hibernated.
    pub keeper: bool,
    /// Its hibernation step ("hibernated 123", "dumping", "refused ...").
    pub hibernate: Option<String>,
    /// Input woke it; it is suspended again at this time unless active.
    pub woken_until_ms: Option<u64>,
    /// When input last woke it (hibernation waits hibernate_after past it).
    pub last_input_ms: Option<u64>,
    /// The inode of the pipe, socket or tty its host gave it as stdin, so
    /// the host's input is watched wherever the worker moved it (the MCP
    /// SDK moves its protocol pipe off fd 0 and puts /dev/null there).
    pub stdin_ino: Option<u64>,
}

fn opt<T: ToString>(v: &Option<T>) -> Option<String> {
    v.as_ref().map(ToString::to_string)
}

impl Tags {
    fn to_map(&self) -> BTreeMap<Tag, Option<String>> {
        BTreeMap::from([
            (Tag::Project, Some(self.project.clone())),
            (Tag::Session, Some(self.session.clone())),
            (Tag::OwnerUid, Some(self.owner_uid.to_string())),
            (Tag::OwnerPid, opt(&self.owner_pid)),
            (Tag::OwnerStart, opt(&self.owner_start)),
            (Tag::MainPid, opt(&self.main_pid)),
            (Tag::MainStart, opt(&self.main_start)),
            (Tag::Created, Some(self.created_ms.to_string())),
            (Tag::MaxRuntime, opt(&self.max_runtime_ms)),
            (Tag::Pinned, self.pinned.then(|| "1".to_string())),
            (Tag::LastActive, opt(&self.last_active_ms)),
            (Tag::Frozen, opt(&self.frozen_ms)),
            (
                Tag::FrozenManual,
                self.frozen_manual.then(|| "1".to_string()),
            ),
            (Tag::Orphaned, opt(&self.orphaned_ms)),
            (Tag::Reaping, self.reaping.clone()),
            (
                Tag::OnMainExit,
                self.stop_on_main_exit
                    .map(|stop| if stop { "stop" } else { "keep" }.to_string()),
            ),
            (Tag::MainExited, opt(&self.main_exited_ms)),
            (Tag::Keeper, self.keeper.then(|| "1".to_string())),
            (Tag::Hibernate, self.hibernate.clone()),
            (Tag::Woken, opt(&self.woken_until_ms)),
            (Tag::LastInput, opt(&self.last_input_ms)),
            (Tag::Stdin, opt(&self.stdin_ino)),
        ])
    }

    /// Writes every tag that has a value (and only those).
    pub fn write(&self, cg: &Cgroup) -> Result<(), CgroupError> {
        for (tag, value) in self.to_map() {
            if let Some(v) = value {
                tag.set(cg, Some(&v))?;
            }
        }
        Ok(())
    }

    /// Reads a gate's tags. None when it has no project tag: not ours, or
    /// caught between mkdir and tagging.
    pub fn read(cg: &Cgroup) -> Result<Option<Tags>, CgroupError> {
        Ok(Tags::from_map(&cg.read_tags()?))
    }

    pub fn from_map(m: &BTreeMap<String, String>) -> Option<Tags> {
        let get = |t: Tag| m.get(t.as_str());
        let num = |t: Tag| get(t).and_then(|v| v.parse::<u64>().ok());
        let pid = |t: Tag| get(t).and_then(|v| v.parse::<u32>().ok());
        let flag = |t: Tag| get(t).is_some_and(|v| v == "1");
        Some(Tags {
            project: get(Tag::Project)?.clone(),
            session: get(Tag::Session).cloned().unwrap_or_default(),
            owner_uid: pid(Tag::OwnerUid)?,
            owner_pid: pid(Tag::OwnerPid),
            owner_start: num(Tag::OwnerStart),
            main_pid: pid(Tag::MainPid),
            main_start: num(Tag::MainStart),
            created_ms: num(Tag::Created).unwrap_or(0),
            max_runtime_ms: num(Tag::MaxRuntime),
            pinned: flag(Tag::Pinned),
            last_active_ms: num(Tag::LastActive),
            frozen_ms: num(Tag::Frozen),
            frozen_manual: flag(Tag::FrozenManual),
            orphaned_ms: num(Tag::Orphaned),
            reaping: get(Tag::Reaping).cloned(),
            stop_on_main_exit: get(Tag::OnMainExit).and_then(|v| match v.as_str() {
                "stop" => Some(true),
                "keep" => Some(false),
                _ => None,
            }),
            main_exited_ms: num(Tag::MainExited),
            keeper: flag(Tag::Keeper),
            hibernate: get(Tag::Hibernate).cloned(),
            woken_until_ms: num(Tag::Woken),
            last_input_ms: num(Tag::LastInput),
            stdin_ino: num(Tag::Stdin),
        })
    }
}

/// Where a gate's tags are stored: its cgroup's xattrs, or a map in tests.
pub trait TagStore: Send + Sync {
    /// Writes `tag`, or removes it when `value` is None.
    fn write(&self, tag: Tag, value: Option<&str>) -> Result<(), CgroupError>;
}

impl TagStore for Cgroup {
    fn write(&self, tag: Tag, value: Option<&str>) -> Result<(), CgroupError> {
        tag.set(self, value)
    }
}

/// A gate's tags and phase, and where the tags are stored.
#[derive(Clone)]
pub struct Record {
    store: Arc<dyn TagStore>,
    tags: Tags,
    phase: Phase,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("tags", &self.tags)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Record {
    /// A gate as found: its phase from its tags and the kernel's frozen flag.
    pub fn found(store: Arc<dyn TagStore>, tags: Tags, frozen: bool, now_ms: u64) -> Record {
        let phase = phase_of(&tags, frozen, now_ms);
        Record { store, tags, phase }
    }

    /// The record of the gate at `cg`, read at `now_ms`; None when it has
    /// no tags.
    pub fn read(cg: &Cgroup, now_ms: u64) -> Result<Option<Record>, CgroupError> {
        let Some(tags) = Tags::read(cg)? else {
            return Ok(None);
        };
        let frozen = cg.read_cgroup_events()?.frozen;
        Ok(Some(Record::found(
            Arc::new(cg.clone()),
            tags,
            frozen,
            now_ms,
        )))
    }

    pub fn tags(&self) -> &Tags {
        &self.tags
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Enters `phase`: writes the tags that say it (only those that change),
    /// then keeps it. Written in the order that leaves a daemon which dies
    /// halfway a phase it can act on: the reap intent and the hibernation
    /// step first, the freeze's tags last (a freeze tag without its kernel
    /// freeze reads as running). On an error the phase is not entered and
    /// the tags written so far are kept here as they are on disk.
    pub fn enter(&mut self, phase: Phase) -> Result<(), CgroupError> {
        let want = PhaseTags::of(&phase);
        let have = PhaseTags::from(&self.tags);
        if want.reaping != have.reaping {
            self.store.write(Tag::Reaping, want.reaping.as_deref())?;
            self.tags.reaping = want.reaping;
        }
        if want.hibernate != have.hibernate {
            self.store
                .write(Tag::Hibernate, want.hibernate.as_deref())?;
            self.tags.hibernate = want.hibernate;
        }
        if want.woken_until_ms != have.woken_until_ms {
            let v = want.woken_until_ms.map(|ms| ms.to_string());
            self.store.write(Tag::Woken, v.as_deref())?;
            self.tags.woken_until_ms = want.woken_until_ms;
        }
        if want.frozen_manual != have.frozen_manual {
            self.store
                .write(Tag::FrozenManual, want.frozen_manual.then_some("1"))?;
            self.tags.frozen_manual = want.frozen_manual;
        }
        if want.frozen_ms != have.frozen_ms {
            let v = want.frozen_ms.map(|ms| ms.to_string());
            self.store.write(Tag::Frozen, v.as_deref())?;
            self.tags.frozen_ms = want.frozen_ms;
        }
        self.phase = phase;
        Ok(())
    }

    pub fn set_pinned(&mut self, pinned: bool) -> Result<(), CgroupError> {
        self.store.write(Tag::Pinned, pinned.then_some("1"))?;
        self.tags.pinned = pinned;
        Ok(())
    }

    pub fn set_session(&mut self, session: &str) -> Result<(), CgroupError> {
        self.store.write(Tag::Session, Some(session))?;
        self.tags.session = session.to_string();
        Ok(())
    }

    /// Persisted so a restarted daemon does not reset the idle clock.
    pub fn set_last_active(&mut self, ms: u64) -> Result<(), CgroupError> {
        self.store.write(Tag::LastActive, Some(&ms.to_string()))?;
        self.tags.last_active_ms = Some(ms);
        Ok(())
    }

    /// The owner process exited at `ms`.
    pub fn set_orphaned(&mut self, ms: u64) -> Result<(), CgroupError> {
        self.store.write(Tag::Orphaned, Some(&ms.to_string()))?;
        self.tags.orphaned_ms = Some(ms);
        Ok(())
    }

    /// Input woke it at `ms`.
    pub fn set_last_input(&mut self, ms: u64) -> Result<(), CgroupError> {
        self.store.write(Tag::LastInput, Some(&ms.to_string()))?;
        self.tags.last_input_ms = Some(ms);
        Ok(())
    }

    /// The main process exited at `ms`.
    pub fn set_main_exited(&mut self, ms: u64) -> Result<(), CgroupError> {
        self.store.write(Tag::MainExited, Some(&ms.to_string()))?;
        self.tags.main_exited_ms = Some(ms);
        Ok(())
    }
}

/// The tags that say a phase.
#[derive(Debug, Default, PartialEq, Eq)]
struct PhaseTags {
    reaping: Option<String>,
    hibernate: Option<String>,
    woken_until_ms: Option<u64>,
    frozen_manual: bool,
    frozen_ms: Option<u64>,
}

impl PhaseTags {
    fn of(phase: &Phase) -> PhaseTags {
        let frozen = |since: u64, hibernate: Option<String>| PhaseTags {
            hibernate,
            frozen_ms: Some(since),
            ..PhaseTags::default()
        };
        match phase {
            Phase::Running => PhaseTags::default(),
            Phase::Suspended { since_ms, manual } => PhaseTags {
                frozen_manual: *manual,
                ..frozen(*since_ms, None)
            },
            // One line: a tag is read back whole.
            Phase::DumpRefused { since_ms, reason } => frozen(
                *since_ms,
                Some(format!("refused {}", reason.replace('\n', " "))),
            ),
            Phase::Dumping { since_ms } => frozen(*since_ms, Some("dumping".into())),
            Phase::Hibernated {
                since_ms,
                image_bytes,
            } => frozen(*since_ms, Some(format!("hibernated {image_bytes}"))),
            Phase::Restoring { since_ms } => frozen(*since_ms, Some("restoring".into())),
            Phase::Woken { until_ms } => PhaseTags {
                woken_until_ms: Some(*until_ms),
                ..PhaseTags::default()
            },
            Phase::Stopping { .. } | Phase::Killing { .. } => PhaseTags {
                reaping: phase.intent_tag(),
                ..PhaseTags::default()
            },
        }
    }

    fn from(tags: &Tags) -> PhaseTags {
        PhaseTags {
            reaping: tags.reaping.clone(),
            hibernate: tags.hibernate.clone(),
            woken_until_ms: tags.woken_until_ms,
            frozen_manual: tags.frozen_manual,
            frozen_ms: tags.frozen_ms,
        }
    }
}

/// The phase a gate's tags and the kernel's frozen flag say it is in: for a
/// daemon that finds the gate, and for root's direct use.
pub fn phase_of(tags: &Tags, frozen: bool, now_ms: u64) -> Phase {
    if let Some(p) = tags
        .reaping
        .as_deref()
        .and_then(|i| Phase::from_intent(i, now_ms))
    {
        return p;
    }
    let since_ms = tags.frozen_ms.unwrap_or(now_ms);
    let step = tags.hibernate.as_deref().unwrap_or("");
    let (word, rest) = step.split_once(' ').unwrap_or((step, ""));
    match word {
        "hibernated" => {
            if let Ok(image_bytes) = rest.parse() {
                return Phase::Hibernated {
                    since_ms,
                    image_bytes,
                };
            }
        }
        "dumping" => return Phase::Dumping { since_ms },
        "restoring" => return Phase::Restoring { since_ms },
        "refused" if frozen => {
            return Phase::DumpRefused {
                since_ms,
                reason: rest.to_string(),
            }
        }
        _ => {}
    }
    if let (false, Some(until_ms)) = (frozen, tags.woken_until_ms) {
        return Phase::Woken { until_ms };
    }
    if frozen {
        // A freeze we did not record is taken for a person's (both ways to
        // `gov freeze` tag it; someone wrote cgroup.freeze by hand): held
        // until thawed, shown `frozen` so a person sees it, and never
        // stopped at once by a zero `frozen_hold`.
        Phase::Suspended {
            since_ms,
            manual: tags.frozen_manual || tags.frozen_ms.is_none(),
        }
    } else {
        Phase::Running
    }
}

/// An in-memory tag store, for tests of what writes tags.
#[derive(Default)]
pub struct MemoryTags(pub std::sync::Mutex<BTreeMap<String, String>>);

impl TagStore for MemoryTags {
    fn write(&self, tag: Tag, value: Option<&str>) -> Result<(), CgroupError> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match value {
            Some(v) => m.insert(tag.as_str().to_string(), v.to_string()),
            None => m.remove(tag.as_str()),
        };
        Ok(())
    }
}

impl MemoryTags {
    /// The tags as a daemon would read them back.
    pub fn read(&self) -> Option<Tags> {
        Tags::from_map(&self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reaper::Reason;

    fn every_phase() -> Vec<Phase> {
        vec![
            Phase::Running,
            Phase::Suspended {
                since_ms: 3,
                manual: false,
            },
            Phase::Suspended {
                since_ms: 3,
                manual: true,
            },
            Phase::DumpRefused {
                since_ms: 3,
                reason: "it holds a tcp socket".into(),
            },
            Phase::Dumping { since_ms: 3 },
            Phase::Hibernated {
                since_ms: 4,
                image_bytes: 200 << 20,
            },
            Phase::Restoring { since_ms: 4 },
            Phase::Woken { until_ms: 13 },
            Phase::Stopping {
                since_ms: 5,
                reason: Reason::Orphan,
            },
            Phase::Killing {
                reason: Reason::Deadline,
            },
        ]
    }

    fn frozen_in(p: &Phase) -> bool {
        p.asleep_since().is_some()
    }

    fn record(store: &Arc<MemoryTags>) -> Record {
        let tags = Tags {
            project: "/p".into(),
            ..Tags::default()
        };
        store.write(Tag::Project, Some("/p")).unwrap();
        store.write(Tag::OwnerUid, Some("0")).unwrap();
        Record::found(store.clone(), tags, false, 1)
    }

    /// Whatever phase is entered from whatever phase, a daemon that reads
    /// the tags back (with the kernel's freeze as that phase has it) finds
    /// the phase entered, and the record in memory is what is on disk.
    #[test]
    fn tags_round_trip_through_a_map() {
        let tags = Tags {
            project: "/home/ann/src/MyPkg".into(),
            session: "3fa2c1d0".into(),
            owner_uid: 1000,
            owner_pid: Some(42),
            owner_start: Some(7),
            main_pid: Some(43),
            main_start: Some(8),
            created_ms: 1_700_000_000_000,
            max_runtime_ms: None,
            pinned: true,
            last_active_ms: Some(1_700_000_000_500),
            frozen_ms: None,
            frozen_manual: true,
            orphaned_ms: None,
            reaping: Some("stop:idle:5".into()),
            stop_on_main_exit: Some(true),
            main_exited_ms: Some(1_700_000_000_900),
            keeper: true,
            hibernate: Some("hibernated 42".into()),
            woken_until_ms: Some(1_700_000_001_000),
            last_input_ms: Some(1_700_000_000_950),
            stdin_ino: Some(4_262_734),
        };
        let m: BTreeMap<String, String> = tags
            .to_map()
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.as_str().to_string(), v)))
            .collect();
        assert_eq!(Tags::from_map(&m), Some(tags));
        assert_eq!(Tags::from_map(&BTreeMap::new()), None);
    }

    #[test]
    fn every_phase_entered_is_the_phase_read_back() {
        for from in every_phase() {
            for to in every_phase() {
                let store = Arc::new(MemoryTags::default());
                let mut r = record(&store);
                r.enter(from.clone()).unwrap();
                r.enter(to.clone()).unwrap();
                let on_disk = store.read().unwrap();
                assert_eq!(&on_disk, r.tags(), "{from:?} -> {to:?}");
                assert_eq!(
                    phase_of(&on_disk, frozen_in(&to), 99),
                    to,
                    "{from:?} -> {to:?}"
                );
                assert_eq!(r.phase(), &to);
            }
        }
    }

    #[test]
    fn a_restart_resumes_from_tags_and_the_frozen_flag() {
        let tags = |f: fn(&mut Tags)| {
            let mut t = Tags::default();
            f(&mut t);
            t
        };
        assert_eq!(phase_of(&tags(|_| {}), false, 5), Phase::Running);
        // A freeze nobody tagged is a person's.
        assert_eq!(
            phase_of(&tags(|_| {}), true, 5),
            Phase::Suspended {
                since_ms: 5,
                manual: true
            }
        );
        assert_eq!(
            phase_of(&tags(|t| t.frozen_ms = Some(3)), true, 5),
            Phase::Suspended {
                since_ms: 3,
                manual: false
            }
        );
        // A freeze tag without the kernel's freeze: it runs.
        assert_eq!(
            phase_of(&tags(|t| t.frozen_ms = Some(3)), false, 5),
            Phase::Running
        );
        // A reap intent wins over everything else.
        let t = tags(|t| {
            t.reaping = Some("kill:orphan".into());
            t.hibernate = Some("hibernated 9".into());
        });
        assert_eq!(
            phase_of(&t, false, 5),
            Phase::Killing {
                reason: Reason::Orphan
            }
        );
        // A damaged hibernation tag is not a phase.
        let t = tags(|t| t.hibernate = Some("hibernated x".into()));
        assert_eq!(phase_of(&t, false, 5), Phase::Running);
    }

    /// A write that fails halfway through an `enter` leaves the phase as it
    /// was and the tags in memory as they are on disk, for every prefix of
    /// the writes of every transition.
    #[test]
    fn a_daemon_dying_halfway_through_enter_leaves_a_safe_phase() {
        struct Failing {
            inner: MemoryTags,
            left: std::sync::atomic::AtomicUsize,
        }
        impl TagStore for Failing {
            fn write(&self, tag: Tag, value: Option<&str>) -> Result<(), CgroupError> {
                use std::sync::atomic::Ordering;
                if self.left.load(Ordering::SeqCst) == 0 {
                    return Err(CgroupError::Io {
                        op: "write",
                        path: "tag".into(),
                        error: std::io::Error::from_raw_os_error(libc::EIO),
                    });
                }
                self.left.fetch_sub(1, Ordering::SeqCst);
                self.inner.write(tag, value)
            }
        }
        for from in every_phase() {
            for to in every_phase() {
                for writes in 0..4 {
                    let store = Arc::new(Failing {
                        inner: MemoryTags::default(),
                        left: usize::MAX.into(),
                    });
                    store.write(Tag::Project, Some("/p")).unwrap();
                    store.write(Tag::OwnerUid, Some("0")).unwrap();
                    let mut r = Record::found(store.clone(), store.inner.read().unwrap(), false, 1);
                    r.enter(from.clone()).unwrap();
                    store
                        .left
                        .store(writes, std::sync::atomic::Ordering::SeqCst);
                    let done = r.enter(to.clone()).is_ok();
                    let tags = store.inner.read().unwrap();
                    if done {
                        continue;
                    }
                    assert_eq!(r.phase(), &from, "{from:?} -> {to:?} after {writes}");
                    assert_eq!(r.tags(), &tags, "{from:?} -> {to:?} after {writes}");
                }
            }
        }
    }
}
