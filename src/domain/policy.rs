//! Organization policy (timeouts, lifetime, classes, limits, retention) and the rules that
//! apply it, plus the workspace class sizes that the runtime enforces.
//!
//! Rules take the facts they need and `now` as parameters; they never look anything up,
//! so loops and handlers share one definition and tests move the clock freely.

use std::fmt;
use std::time::Duration;

use time::OffsetDateTime;

use super::ids::ClassId;
use super::validate::{FieldError, check_slug};

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(60 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;
const TIB: u64 = 1024 * GIB;

/// Shortest inactivity timeout: anything shorter would stop workspaces while the user
/// reads a page of output.
pub const MIN_TIMEOUT: Duration = MINUTE;
/// Longest lifetime an organization may allow; beyond it workspaces stop being
/// disposable and become pets that never get the latest image.
pub const MAX_LIFETIME_LIMIT: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// How long before a timeout stops a workspace its user is warned.
pub const STOP_WARNING: Duration = Duration::from_secs(5 * 60);
/// Shortest dormancy period, so a workspace stopped overnight is not deleted.
pub const MIN_DORMANCY: Duration = DAY;

fn human(d: &Duration) -> humantime::FormattedDuration {
    humantime::format_duration(*d)
}

/// A workspace size that the runtime enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSpec {
    pub name: String,
    /// CPU in thousandths of a core.
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub max_processes: u32,
}

impl ClassSpec {
    /// Checks that the class has a usable name and sizes a runtime can honour. The lower
    /// bounds are what a shell, git and an editor server need to start at all.
    pub fn validate(&self) -> Result<(), FieldError> {
        check_slug("name", &self.name, 40)?;
        check_range(
            "cpu_millis",
            self.cpu_millis.into(),
            100,
            256_000,
            "millicores",
        )?;
        check_bytes("memory_bytes", self.memory_bytes, 64 * MIB, TIB)?;
        check_bytes("disk_bytes", self.disk_bytes, 256 * MIB, 16 * TIB)?;
        check_range(
            "max_processes",
            self.max_processes.into(),
            16,
            1_000_000,
            "processes",
        )?;
        Ok(())
    }
}

/// The largest class the cell lets an organization define (an administrator's setting,
/// defaulting to the host's capacity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassLimits {
    pub cpu_millis: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

impl ClassSpec {
    /// Checks the class against the cell's limits, naming the limit exceeded.
    pub fn check_within(&self, limits: &ClassLimits) -> Result<(), FieldError> {
        let over = |field: &str, what: String| {
            Err(FieldError::new(
                field,
                format!(
                    "{what} is the most a class may have on this cell (set by its administrator)"
                ),
            ))
        };
        if self.cpu_millis > limits.cpu_millis {
            return over("cpu_millis", format!("{} millicores", limits.cpu_millis));
        }
        if self.memory_bytes > limits.memory_bytes {
            return over("memory_bytes", format!("{} MiB", limits.memory_bytes / MIB));
        }
        if self.disk_bytes > limits.disk_bytes {
            return over("disk_bytes", format!("{} GiB", limits.disk_bytes / GIB));
        }
        Ok(())
    }
}

fn check_range(field: &str, v: u64, min: u64, max: u64, unit: &str) -> Result<(), FieldError> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("must be between {min} and {max} {unit}"),
        ))
    }
}

fn check_bytes(field: &str, v: u64, min: u64, max: u64) -> Result<(), FieldError> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!(
                "must be between {} and {} bytes ({} MiB to {} TiB)",
                min,
                max,
                min / MIB,
                max / TIB
            ),
        ))
    }
}

/// Why a running workspace is due to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StopReason {
    /// No activity for the workspace's timeout.
    Inactivity,
    /// Running for the organization's maximum lifetime, active or not.
    MaxLifetime,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Inactivity => "inactivity",
            StopReason::MaxLifetime => "max_lifetime",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that the organization's policy does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(
        "an owner of the organization has fixed the inactivity timeout; leave the timeout unset to use the default"
    )]
    TimeoutLocked,
    #[error("the timeout can be at most {}; choose a shorter one", human(.max))]
    TimeoutTooLong { max: Duration },
    #[error("the timeout must be at least {}; choose a longer one", human(.min))]
    TimeoutTooShort { min: Duration },
    #[error(
        "the class {class} is not allowed in this organization; choose an allowed class or ask an owner to allow it"
    )]
    ClassNotAllowed { class: String },
    #[error(
        "you already have {max} workspaces running, the most this organization allows; stop one and try again"
    )]
    TooManyRunning { max: u32 },
}

/// The rules an organization sets for its workspaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Inactivity timeout used when a user does not choose one.
    pub default_timeout: Duration,
    /// Longest inactivity timeout a user may choose.
    pub max_timeout: Duration,
    /// `false` means an owner locked the timeout to the default.
    pub users_can_extend: bool,
    /// Longest a workspace may run in one go, active or not.
    pub max_lifetime: Duration,
    /// Classes members may use; empty means all.
    pub allowed_classes: Vec<ClassId>,
    pub max_running_per_user: u32,
    /// Backups always kept, however old.
    pub backup_keep_last: u32,
    /// Backups younger than this are kept too.
    pub backup_keep_within: Duration,
    /// How long backups of a deleted workspace stay, so a mistaken delete can be undone.
    pub deleted_backup_grace: Duration,
    /// Stopped workspaces are deleted after this long; `None` keeps them forever.
    pub dormancy: Option<Duration>,
    pub outbound_network: bool,
    /// Whether the whole home directory is backed up, not only the repositories.
    pub backup_home: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            default_timeout: 30 * MINUTE,
            max_timeout: 8 * HOUR,
            users_can_extend: true,
            max_lifetime: 36 * HOUR,
            allowed_classes: Vec::new(),
            max_running_per_user: 4,
            backup_keep_last: 5,
            backup_keep_within: 7 * DAY,
            deleted_backup_grace: 7 * DAY,
            dormancy: None,
            outbound_network: true,
            backup_home: false,
        }
    }
}

impl Policy {
    /// Checks that the settings are consistent; the error names the field to fix.
    pub fn validate(&self) -> Result<(), FieldError> {
        let err = |field: &str, reason: String| Err(FieldError::new(field, reason));
        if self.default_timeout < MIN_TIMEOUT {
            return err(
                "default_timeout",
                format!("must be at least {}", human(&MIN_TIMEOUT)),
            );
        }
        if self.max_timeout < MIN_TIMEOUT {
            return err(
                "max_timeout",
                format!("must be at least {}", human(&MIN_TIMEOUT)),
            );
        }
        // Settings at odds with each other: each may be fine alone, so a change to one can
        // clash with the others the organization already has.
        let clash = |field: &str, reason: String| {
            Err(FieldError::conflict(field, "policy_conflict", reason))
        };
        if self.default_timeout > self.max_timeout {
            return clash(
                "default_timeout",
                format!(
                    "must not be longer than the maximum timeout ({})",
                    human(&self.max_timeout)
                ),
            );
        }
        if self.max_timeout > self.max_lifetime {
            return clash(
                "max_timeout",
                format!(
                    "must not be longer than the maximum lifetime ({})",
                    human(&self.max_lifetime)
                ),
            );
        }
        if self.max_lifetime > MAX_LIFETIME_LIMIT {
            return err(
                "max_lifetime",
                format!("must be at most {}", human(&MAX_LIFETIME_LIMIT)),
            );
        }
        if self.max_running_per_user < 1 {
            return err("max_running_per_user", "must be at least 1".into());
        }
        if self.backup_keep_last < 1 {
            return err("backup_keep_last", "must be at least 1".into());
        }
        if let Some(d) = self.dormancy
            && d < MIN_DORMANCY
        {
            return err(
                "dormancy",
                format!(
                    "must be at least {}, or unset to keep stopped workspaces",
                    human(&MIN_DORMANCY)
                ),
            );
        }
        Ok(())
    }

    /// The inactivity timeout for a workspace, given what the user asked for.
    pub fn resolve_timeout(&self, requested: Option<Duration>) -> Result<Duration, RuleError> {
        let Some(t) = requested else {
            return Ok(self.default_timeout);
        };
        // Asking for exactly the default is not a change, so it is fine even when locked;
        // clients that always send a value keep working.
        if !self.users_can_extend && t != self.default_timeout {
            return Err(RuleError::TimeoutLocked);
        }
        if t > self.max_timeout {
            return Err(RuleError::TimeoutTooLong {
                max: self.max_timeout,
            });
        }
        if t < MIN_TIMEOUT {
            return Err(RuleError::TimeoutTooShort { min: MIN_TIMEOUT });
        }
        Ok(t)
    }

    pub fn check_class(&self, class: &ClassId) -> Result<(), RuleError> {
        if self.allowed_classes.is_empty() || self.allowed_classes.contains(class) {
            Ok(())
        } else {
            Err(RuleError::ClassNotAllowed {
                class: class.to_string(),
            })
        }
    }

    /// `active_for_user` counts the user's workspaces in an active phase, not including
    /// the one about to start.
    pub fn check_can_start(&self, active_for_user: u32) -> Result<(), RuleError> {
        if active_for_user >= self.max_running_per_user {
            Err(RuleError::TooManyRunning {
                max: self.max_running_per_user,
            })
        } else {
            Ok(())
        }
    }

    /// When a running workspace is due to stop, and why. On a tie inactivity is named,
    /// since that is what the user can do something about.
    pub fn stop_deadline(
        &self,
        last_activity: OffsetDateTime,
        started_at: OffsetDateTime,
        timeout: Duration,
    ) -> (OffsetDateTime, StopReason) {
        let idle = add(last_activity, timeout);
        let lifetime = add(started_at, self.max_lifetime);
        if lifetime < idle {
            (lifetime, StopReason::MaxLifetime)
        } else {
            (idle, StopReason::Inactivity)
        }
    }

    /// Whether a running workspace should be stopped at `now`, and why.
    pub fn should_stop(
        &self,
        now: OffsetDateTime,
        last_activity: OffsetDateTime,
        started_at: OffsetDateTime,
        timeout: Duration,
    ) -> Option<StopReason> {
        let (deadline, reason) = self.stop_deadline(last_activity, started_at, timeout);
        (deadline <= now).then_some(reason)
    }

    /// Whether the user should be warned at `now` that the workspace will stop: within
    /// [`STOP_WARNING`] (or half the timeout, when that is shorter) of the deadline.
    pub fn stop_warning(
        &self,
        now: OffsetDateTime,
        last_activity: OffsetDateTime,
        started_at: OffsetDateTime,
        timeout: Duration,
    ) -> Option<(OffsetDateTime, StopReason)> {
        let (deadline, reason) = self.stop_deadline(last_activity, started_at, timeout);
        let lead = STOP_WARNING.min(timeout / 2);
        let warn_from = time::Duration::try_from(lead)
            .ok()
            .and_then(|l| deadline.checked_sub(l))
            .unwrap_or(deadline);
        (warn_from <= now && now < deadline).then_some((deadline, reason))
    }

    /// Which of a workspace's snapshots (taken at `times`, oldest first) retention lets go
    /// at `now`: all but the newest `backup_keep_last` and those within `backup_keep_within`.
    /// Returns their indices.
    pub fn snapshots_to_forget(&self, times: &[OffsetDateTime], now: OffsetDateTime) -> Vec<usize> {
        let keep_last = self.backup_keep_last.max(1) as usize;
        let cutoff = time::Duration::try_from(self.backup_keep_within)
            .ok()
            .and_then(|d| now.checked_sub(d));
        let newest_kept = times.len().saturating_sub(keep_last);
        (0..newest_kept)
            .filter(|&i| cutoff.is_some_and(|c| times[i] < c))
            .collect()
    }

    /// Whether a workspace stopped since `stopped_since` is due for deletion at `now`.
    pub fn dormant(&self, stopped_since: OffsetDateTime, now: OffsetDateTime) -> bool {
        self.dormancy.is_some_and(|d| add(stopped_since, d) <= now)
    }
}

/// `t + d`, saturating at the largest representable time instead of panicking: a huge
/// duration from a bad record must mean "never", not a crashed loop.
fn add(t: OffsetDateTime, d: Duration) -> OffsetDateTime {
    time::Duration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d))
        .unwrap_or_else(|| time::PrimitiveDateTime::MAX.assume_utc())
}

// Panicking on an unexpected result is how a test fails.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2025-01-01 00:00 UTC);

    fn class() -> ClassSpec {
        ClassSpec {
            name: "standard".into(),
            cpu_millis: 2_000,
            memory_bytes: 4 * GIB,
            disk_bytes: 30 * GIB,
            max_processes: 4_096,
        }
    }

    fn class_err(c: &ClassSpec) -> String {
        c.validate().unwrap_err().field
    }

    fn policy_err(p: &Policy) -> String {
        p.validate().unwrap_err().field
    }

    fn cls(n: u128) -> ClassId {
        ClassId::from_ulid(ulid::Ulid(n))
    }

    #[test]
    fn class_valid() {
        assert_eq!(class().validate(), Ok(()));
    }

    #[test]
    fn class_name() {
        for ok in ["a", "large-2", &"a".repeat(40)] {
            let c = ClassSpec {
                name: ok.to_string(),
                ..class()
            };
            assert_eq!(c.validate(), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", "Large", "a_b", &"a".repeat(41)] {
            let c = ClassSpec {
                name: bad.to_string(),
                ..class()
            };
            assert_eq!(class_err(&c), "name", "{bad}");
        }
    }

    #[test]
    fn class_bounds() {
        let ok = |c: ClassSpec| assert_eq!(c.validate(), Ok(()), "{c:?}");
        ok(ClassSpec {
            cpu_millis: 100,
            ..class()
        });
        ok(ClassSpec {
            cpu_millis: 256_000,
            ..class()
        });
        ok(ClassSpec {
            memory_bytes: 64 * MIB,
            ..class()
        });
        ok(ClassSpec {
            memory_bytes: TIB,
            ..class()
        });
        ok(ClassSpec {
            disk_bytes: 256 * MIB,
            ..class()
        });
        ok(ClassSpec {
            disk_bytes: 16 * TIB,
            ..class()
        });
        ok(ClassSpec {
            max_processes: 16,
            ..class()
        });
        ok(ClassSpec {
            max_processes: 1_000_000,
            ..class()
        });

        let bad = [
            (
                ClassSpec {
                    cpu_millis: 99,
                    ..class()
                },
                "cpu_millis",
            ),
            (
                ClassSpec {
                    cpu_millis: 256_001,
                    ..class()
                },
                "cpu_millis",
            ),
            (
                ClassSpec {
                    memory_bytes: 64 * MIB - 1,
                    ..class()
                },
                "memory_bytes",
            ),
            (
                ClassSpec {
                    memory_bytes: TIB + 1,
                    ..class()
                },
                "memory_bytes",
            ),
            (
                ClassSpec {
                    disk_bytes: 256 * MIB - 1,
                    ..class()
                },
                "disk_bytes",
            ),
            (
                ClassSpec {
                    disk_bytes: 16 * TIB + 1,
                    ..class()
                },
                "disk_bytes",
            ),
            (
                ClassSpec {
                    max_processes: 15,
                    ..class()
                },
                "max_processes",
            ),
            (
                ClassSpec {
                    max_processes: 1_000_001,
                    ..class()
                },
                "max_processes",
            ),
        ];
        for (c, field) in bad {
            assert_eq!(class_err(&c), field, "{c:?}");
        }
        let reason = ClassSpec {
            memory_bytes: 0,
            ..class()
        }
        .validate()
        .unwrap_err()
        .reason;
        assert!(reason.contains("64 MiB to 1 TiB"), "{reason}");
    }

    #[test]
    fn policy_defaults() {
        let p = Policy::default();
        assert_eq!(p.default_timeout, Duration::from_secs(30 * 60));
        assert_eq!(p.max_timeout, Duration::from_secs(8 * 3600));
        assert!(p.users_can_extend);
        assert_eq!(p.max_lifetime, Duration::from_secs(36 * 3600));
        assert!(p.allowed_classes.is_empty());
        assert_eq!(p.max_running_per_user, 4);
        assert_eq!(p.backup_keep_last, 5);
        assert_eq!(p.backup_keep_within, Duration::from_secs(7 * 86400));
        assert_eq!(p.deleted_backup_grace, Duration::from_secs(7 * 86400));
        assert_eq!(p.dormancy, None);
        assert!(p.outbound_network);
        assert!(!p.backup_home);
        assert_eq!(p.validate(), Ok(()));
    }

    #[test]
    fn policy_validation() {
        let d = Policy::default;
        let bad = [
            (
                Policy {
                    default_timeout: MINUTE - Duration::from_secs(1),
                    ..d()
                },
                "default_timeout",
            ),
            (
                Policy {
                    max_timeout: Duration::from_secs(59),
                    default_timeout: Duration::from_secs(59),
                    ..d()
                },
                "default_timeout",
            ),
            (
                Policy {
                    max_timeout: Duration::from_secs(59),
                    ..d()
                },
                "max_timeout",
            ),
            (
                Policy {
                    default_timeout: MINUTE,
                    max_timeout: Duration::from_secs(59),
                    ..d()
                },
                "max_timeout",
            ),
            (
                Policy {
                    default_timeout: 9 * HOUR,
                    ..d()
                },
                "default_timeout",
            ),
            (
                Policy {
                    max_timeout: 37 * HOUR,
                    ..d()
                },
                "max_timeout",
            ),
            (
                Policy {
                    max_lifetime: 7 * HOUR,
                    ..d()
                },
                "max_timeout",
            ),
            (
                Policy {
                    max_lifetime: 31 * DAY,
                    ..d()
                },
                "max_lifetime",
            ),
            (
                Policy {
                    max_running_per_user: 0,
                    ..d()
                },
                "max_running_per_user",
            ),
            (
                Policy {
                    backup_keep_last: 0,
                    ..d()
                },
                "backup_keep_last",
            ),
            (
                Policy {
                    dormancy: Some(DAY - Duration::from_secs(1)),
                    ..d()
                },
                "dormancy",
            ),
        ];
        for (p, field) in bad {
            assert_eq!(policy_err(&p), field, "{p:?}");
        }
        let good = [
            Policy {
                default_timeout: MINUTE,
                max_timeout: MINUTE,
                ..d()
            },
            Policy {
                default_timeout: 8 * HOUR,
                ..d()
            },
            Policy {
                max_timeout: 36 * HOUR,
                ..d()
            },
            Policy {
                max_lifetime: 30 * DAY,
                max_timeout: 30 * DAY,
                ..d()
            },
            Policy {
                max_running_per_user: 1,
                backup_keep_last: 1,
                ..d()
            },
            Policy {
                dormancy: Some(DAY),
                ..d()
            },
            Policy {
                dormancy: Some(365 * DAY),
                ..d()
            },
        ];
        for p in good {
            assert_eq!(p.validate(), Ok(()), "{p:?}");
        }
        let reason = Policy {
            max_lifetime: 7 * HOUR,
            ..d()
        }
        .validate()
        .unwrap_err()
        .reason;
        assert_eq!(reason, "must not be longer than the maximum lifetime (7h)");
    }

    #[test]
    fn resolve_timeout_when_users_may_choose() {
        let p = Policy::default();
        assert_eq!(p.resolve_timeout(None), Ok(30 * MINUTE));
        assert_eq!(p.resolve_timeout(Some(MINUTE)), Ok(MINUTE));
        assert_eq!(p.resolve_timeout(Some(2 * HOUR)), Ok(2 * HOUR));
        assert_eq!(p.resolve_timeout(Some(8 * HOUR)), Ok(8 * HOUR));
        assert_eq!(
            p.resolve_timeout(Some(8 * HOUR + Duration::from_secs(1))),
            Err(RuleError::TimeoutTooLong { max: 8 * HOUR })
        );
        assert_eq!(
            p.resolve_timeout(Some(Duration::from_secs(59))),
            Err(RuleError::TimeoutTooShort { min: MINUTE })
        );
        assert_eq!(
            p.resolve_timeout(Some(Duration::ZERO)),
            Err(RuleError::TimeoutTooShort { min: MINUTE })
        );
    }

    #[test]
    fn resolve_timeout_when_locked() {
        let p = Policy {
            users_can_extend: false,
            ..Policy::default()
        };
        assert_eq!(p.resolve_timeout(None), Ok(30 * MINUTE));
        assert_eq!(p.resolve_timeout(Some(30 * MINUTE)), Ok(30 * MINUTE));
        assert_eq!(p.resolve_timeout(Some(HOUR)), Err(RuleError::TimeoutLocked));
        assert_eq!(
            p.resolve_timeout(Some(10 * MINUTE)),
            Err(RuleError::TimeoutLocked)
        );
        assert_eq!(
            p.resolve_timeout(Some(100 * HOUR)),
            Err(RuleError::TimeoutLocked)
        );
    }

    #[test]
    fn rule_error_messages() {
        assert_eq!(
            RuleError::TimeoutTooLong { max: 8 * HOUR }.to_string(),
            "the timeout can be at most 8h; choose a shorter one"
        );
        assert_eq!(
            RuleError::TimeoutTooShort { min: MINUTE }.to_string(),
            "the timeout must be at least 1m; choose a longer one"
        );
        assert!(
            RuleError::TimeoutLocked
                .to_string()
                .contains("leave the timeout unset")
        );
        let e = RuleError::ClassNotAllowed {
            class: "cls_x".into(),
        }
        .to_string();
        assert!(e.contains("cls_x") && e.contains("ask an owner"), "{e}");
        let e = RuleError::TooManyRunning { max: 4 }.to_string();
        assert!(e.contains("4 workspaces") && e.contains("stop one"), "{e}");
    }

    #[test]
    fn classes_allowed() {
        let all = Policy::default();
        assert_eq!(all.check_class(&cls(1)), Ok(()));
        let some = Policy {
            allowed_classes: vec![cls(1), cls(2)],
            ..Policy::default()
        };
        assert_eq!(some.check_class(&cls(1)), Ok(()));
        assert_eq!(some.check_class(&cls(2)), Ok(()));
        assert_eq!(
            some.check_class(&cls(3)),
            Err(RuleError::ClassNotAllowed {
                class: cls(3).to_string()
            })
        );
    }

    #[test]
    fn running_limit() {
        let p = Policy::default();
        for n in 0..4 {
            assert_eq!(p.check_can_start(n), Ok(()));
        }
        assert_eq!(
            p.check_can_start(4),
            Err(RuleError::TooManyRunning { max: 4 })
        );
        assert_eq!(
            p.check_can_start(u32::MAX),
            Err(RuleError::TooManyRunning { max: 4 })
        );
        let one = Policy {
            max_running_per_user: 1,
            ..Policy::default()
        };
        assert_eq!(one.check_can_start(0), Ok(()));
        assert!(one.check_can_start(1).is_err());
    }

    #[test]
    fn deadline_is_inactivity_when_that_comes_first() {
        let p = Policy::default();
        let started = T0;
        let active = T0 + time::Duration::hours(2);
        let (at, why) = p.stop_deadline(active, started, 30 * MINUTE);
        assert_eq!(at, T0 + time::Duration::minutes(150));
        assert_eq!(why, StopReason::Inactivity);
    }

    #[test]
    fn deadline_is_lifetime_when_that_comes_first() {
        let p = Policy::default();
        let started = T0;
        let active = T0 + time::Duration::hours(35) + time::Duration::minutes(45);
        let (at, why) = p.stop_deadline(active, started, 30 * MINUTE);
        assert_eq!(at, T0 + time::Duration::hours(36));
        assert_eq!(why, StopReason::MaxLifetime);
    }

    #[test]
    fn deadline_tie_names_inactivity() {
        let p = Policy::default();
        let active = T0 + time::Duration::minutes(35 * 60 + 30);
        let (at, why) = p.stop_deadline(active, T0, 30 * MINUTE);
        assert_eq!(at, T0 + time::Duration::hours(36));
        assert_eq!(why, StopReason::Inactivity);
    }

    #[test]
    fn deadline_saturates_instead_of_overflowing() {
        let p = Policy {
            max_lifetime: Duration::MAX,
            ..Policy::default()
        };
        let (at, why) = p.stop_deadline(T0, T0, Duration::MAX);
        assert_eq!(at, time::PrimitiveDateTime::MAX.assume_utc());
        assert_eq!(why, StopReason::Inactivity);
        assert_eq!(
            p.should_stop(T0 + time::Duration::days(10_000), T0, T0, Duration::MAX),
            None
        );
    }

    #[test]
    fn retention_keeps_the_last_n_and_everything_within_the_period() {
        let p = Policy {
            backup_keep_last: 2,
            backup_keep_within: Duration::from_secs(3 * 24 * 3600),
            ..Policy::default()
        };
        let day = |d: i64| T0 + time::Duration::days(d);
        let now = day(10);
        // Days 1..=9: days 7, 8, 9 are within three days; the last two are 8 and 9.
        let times: Vec<_> = (1..=9).map(day).collect();
        assert_eq!(p.snapshots_to_forget(&times, now), vec![0, 1, 2, 3, 4, 5]);
        // Old ones only: the last two stay however old.
        let old = vec![day(-30), day(-20), day(-10)];
        assert_eq!(p.snapshots_to_forget(&old, now), vec![0]);
        assert!(p.snapshots_to_forget(&old[..2], now).is_empty());
        assert!(p.snapshots_to_forget(&[], now).is_empty());
    }

    #[test]
    fn warning_comes_five_minutes_before_the_deadline_and_ends_at_it() {
        let p = Policy::default();
        let timeout = Duration::from_secs(30 * 60);
        let at = |min: i64| T0 + time::Duration::minutes(min);
        assert_eq!(p.stop_warning(at(24), T0, T0, timeout), None);
        assert_eq!(
            p.stop_warning(at(25), T0, T0, timeout),
            Some((at(30), StopReason::Inactivity))
        );
        assert_eq!(
            p.stop_warning(at(29), T0, T0, timeout),
            Some((at(30), StopReason::Inactivity))
        );
        assert_eq!(p.stop_warning(at(30), T0, T0, timeout), None);
        // Activity moves the deadline, and with it the warning.
        assert_eq!(p.stop_warning(at(29), at(10), T0, timeout), None);
        // Near the end of the lifetime the warning names the lifetime.
        let started = T0 - time::Duration::hours(36) + time::Duration::minutes(2);
        assert_eq!(
            p.stop_warning(T0, T0, started, timeout),
            Some((at(2), StopReason::MaxLifetime))
        );
        // A short timeout is warned about half way, not from its start.
        let short = Duration::from_secs(4 * 60);
        assert_eq!(p.stop_warning(at(1), T0, T0, short), None);
        assert!(p.stop_warning(at(2), T0, T0, short).is_some());
    }

    #[test]
    fn should_stop_at_the_deadline_and_after() {
        let p = Policy::default();
        let timeout = 30 * MINUTE;
        let before = T0 + time::Duration::minutes(29);
        let exactly = T0 + time::Duration::minutes(30);
        assert_eq!(p.should_stop(before, T0, T0, timeout), None);
        assert_eq!(
            p.should_stop(exactly, T0, T0, timeout),
            Some(StopReason::Inactivity)
        );
        assert_eq!(
            p.should_stop(exactly + time::Duration::days(1), T0, T0, timeout),
            Some(StopReason::Inactivity)
        );
        // Constant activity does not keep a workspace beyond its lifetime.
        let now = T0 + time::Duration::hours(36);
        assert_eq!(
            p.should_stop(now, now, T0, timeout),
            Some(StopReason::MaxLifetime)
        );
        assert_eq!(
            p.should_stop(now - time::Duration::seconds(1), now, T0, timeout),
            None
        );
    }

    #[test]
    fn dormancy() {
        let never = Policy::default();
        assert!(!never.dormant(T0, T0 + time::Duration::days(100_000)));
        let p = Policy {
            dormancy: Some(14 * DAY),
            ..Policy::default()
        };
        assert!(!p.dormant(T0, T0));
        assert!(!p.dormant(
            T0,
            T0 + time::Duration::days(14) - time::Duration::seconds(1)
        ));
        assert!(p.dormant(T0, T0 + time::Duration::days(14)));
        assert!(p.dormant(T0, T0 + time::Duration::days(15)));
    }

    #[test]
    fn stop_reason_names() {
        assert_eq!(StopReason::Inactivity.as_str(), "inactivity");
        assert_eq!(StopReason::MaxLifetime.as_str(), "max_lifetime");
        assert_eq!(StopReason::MaxLifetime.to_string(), "max_lifetime");
    }
}
