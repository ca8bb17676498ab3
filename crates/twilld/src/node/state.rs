//! The node loop's decisions, as a state machine with no I/O: each thing that happens
//! (`Input`) moves the state and says what to do (`Effect`s, in order). The executor in
//! `node::mod` turns effects into netlink, store, file, BIRD and metrics calls and feeds
//! what they learn back as inputs. Time is passed in, so every rule here (when a full pass
//! runs, when a repair is due, when readiness comes) is unit-tested without root or clock.

use std::time::{Duration, Instant};

use crate::repairs::{self, Repairs};
use crate::schedule;

/// Why a pass runs: only the ones after something broke count what they fix as repairs
/// (after a store event, changes are the point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A store event, start, a lease change, a reload.
    Event,
    /// The periodic timer.
    Resync,
    /// The VXLAN device was deleted (or found missing) and made anew.
    DeviceDeleted,
    /// The kernel said something of ours was removed.
    Removed,
}

/// A repair waiting out its coalescing window: what to run when it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Entries were removed: read and diff everything.
    Full,
    /// Only the ruleset changed: device, address and rules.
    Rules,
}

/// What a renewal came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Renewed,
    /// The store no longer has our lease.
    Lost,
    /// The store could not be asked.
    Failed,
}

/// What re-reading the config on SIGHUP gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadRead {
    Unchanged,
    /// Unreadable, invalid, or unusable on this node: the running config stays.
    Refused(String),
    /// Usable and different: apply it.
    Changed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A batch of store events went into the peer table: `snapshot` when it held a
    /// (re-)list, `own_lost` when our own lease was missing from it.
    Store {
        snapshot: bool,
        own_lost: bool,
    },
    /// The kernel said an entry of ours (route, neighbour, FDB entry, nexthop, the
    /// device's address) was removed.
    Removed,
    /// The ruleset changed under us.
    RulesChanged,
    /// The coalescing window of a pending repair is over.
    RepairDue,
    /// The VXLAN device was deleted (the monitor), or a check found it missing.
    DeviceDeleted,
    /// The periodic timer; `touched` is whether the monitor saw our entries touched since
    /// the last one (`None`: no monitor).
    Resync {
        touched: Option<bool>,
    },
    /// The renewal timer.
    RenewDue,
    Renewal(Renewal),
    /// We hold a lease again after losing it; `moved` when it is another subnet.
    Reacquired {
        moved: bool,
    },
    /// A pass put these objects back (kind, object).
    Restored(Vec<(&'static str, String)>),
    /// SIGHUP.
    Reload(ReloadRead),
    /// The new config is in the data plane; `keeps_lease` when the held lease still fits
    /// it and advertises the same.
    ConfigApplied {
        keeps_lease: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Acquire a lease again, preferring the same subnet; answers `Reacquired`.
    Reacquire,
    /// Put our subnet on the device (and the IPv6 one in the rules).
    ProgramLease,
    /// Bring the kernel to the peer table: the batch's events alone, or (`full`) every
    /// peer compared with the kernel.
    Pass {
        full: bool,
        trigger: Trigger,
    },
    /// Device, address and rules only.
    Check {
        trigger: Trigger,
    },
    /// Judge peer leases again (the underlay may have gained an address or a route).
    RefreshPolicy,
    WriteSubnetEnv,
    /// Tell the BGP task what we hold now.
    Announce,
    /// The first snapshot is programmed and subnet.env written.
    Ready,
    /// systemd's READY=1, once everything /readyz checks is in place.
    NotifyReady,
    /// Renew now; answers `Renewal`.
    Renew,
    /// Set the renewal timer from the lease's expiry.
    ScheduleRenewal,
    /// Try a failed renewal again soon.
    RetryRenewal,
    /// Take the new config into the data plane; answers `ConfigApplied`.
    ApplyConfig,
    /// Objects of these kinds were put back again within the conflict window.
    Conflicts(Vec<&'static str>),
}

#[derive(Debug)]
pub struct State {
    ready: bool,
    /// When the kernel's entries were last read and diffed.
    last_full: Instant,
    repair: Option<(Instant, Due)>,
    repairs: Repairs,
    /// The longest a repair waits (the resync interval).
    cap: Duration,
}

impl State {
    pub fn new(now: Instant, cap: Duration) -> Self {
        State {
            ready: false,
            last_full: now,
            repair: None,
            repairs: Repairs::default(),
            cap,
        }
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    /// When the pending repair is due, for the executor's timer.
    pub fn repair_at(&self) -> Option<Instant> {
        self.repair.map(|(at, _)| at)
    }

    /// Whether a removal would change anything (a full repair pending covers it).
    pub fn listens_for_removals(&self) -> bool {
        !matches!(self.repair, Some((_, Due::Full)))
    }

    /// Whether a ruleset change would change anything (any pending repair covers it).
    pub fn listens_for_rules(&self) -> bool {
        self.repair.is_none()
    }

    pub fn repairs(&self) -> &Repairs {
        &self.repairs
    }

    pub fn on(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        use Effect::*;
        match input {
            Input::Store { snapshot, own_lost } => {
                let mut out = Vec::new();
                if own_lost {
                    out.push(Reacquire);
                }
                let full = schedule::events_need_full_pass(self.ready, snapshot, own_lost);
                out.push(self.pass(full, Trigger::Event, now));
                if snapshot && !self.ready {
                    self.ready = true;
                    out.extend([WriteSubnetEnv, Announce, Ready]);
                }
                if own_lost {
                    out.push(ScheduleRenewal);
                }
                out.push(NotifyReady);
                out
            }
            Input::Removed => {
                if self.listens_for_removals() {
                    let wait = self.repairs.delay(now, repairs::COALESCE, self.cap);
                    self.repair = Some((now + wait, Due::Full));
                }
                vec![]
            }
            Input::RulesChanged => {
                if self.listens_for_rules() {
                    let wait = self.repairs.delay(now, repairs::COALESCE_RULES, self.cap);
                    self.repair = Some((now + wait, Due::Rules));
                }
                vec![]
            }
            Input::RepairDue => {
                let Some((_, due)) = self.repair.take() else {
                    return vec![];
                };
                if !self.ready {
                    return vec![];
                }
                let repair = match due {
                    Due::Full => self.pass(true, Trigger::Removed, now),
                    Due::Rules => Check {
                        trigger: Trigger::Removed,
                    },
                };
                vec![repair, NotifyReady]
            }
            Input::DeviceDeleted => vec![self.pass(true, Trigger::DeviceDeleted, now)],
            Input::Resync { touched } => {
                if !self.ready {
                    return vec![];
                }
                if schedule::periodic_full_pass(touched, now.duration_since(self.last_full)) {
                    vec![
                        RefreshPolicy,
                        self.pass(true, Trigger::Resync, now),
                        NotifyReady,
                    ]
                } else {
                    vec![
                        Check {
                            trigger: Trigger::Resync,
                        },
                        NotifyReady,
                    ]
                }
            }
            Input::RenewDue => vec![Renew],
            Input::Renewal(Renewal::Renewed) => vec![ScheduleRenewal],
            Input::Renewal(Renewal::Lost) => vec![
                Reacquire,
                self.pass(true, Trigger::Event, now),
                ScheduleRenewal,
            ],
            Input::Renewal(Renewal::Failed) => vec![RetryRenewal],
            Input::Reacquired { moved: false } => vec![],
            Input::Reacquired { moved: true } if self.ready => {
                vec![ProgramLease, WriteSubnetEnv, Announce]
            }
            Input::Reacquired { moved: true } => vec![ProgramLease],
            Input::Restored(objects) => {
                if objects.is_empty() {
                    return vec![];
                }
                let kinds = self.repairs.record(now, &objects);
                if kinds.is_empty() {
                    vec![]
                } else {
                    vec![Conflicts(kinds)]
                }
            }
            Input::Reload(ReloadRead::Changed) => vec![ApplyConfig],
            Input::Reload(_) => vec![],
            Input::ConfigApplied { keeps_lease } => {
                let mut out = Vec::new();
                if !keeps_lease {
                    // Out of the new range, or what we advertise changed: lease again
                    // (the allocator prefers the same subnet).
                    out.push(Reacquire);
                }
                // The address is checked against the new Network even when the lease stays.
                out.extend([
                    ProgramLease,
                    RefreshPolicy,
                    self.pass(true, Trigger::Event, now),
                ]);
                if self.ready {
                    out.push(WriteSubnetEnv);
                }
                out.push(Announce);
                out
            }
        }
    }

    fn pass(&mut self, full: bool, trigger: Trigger, now: Instant) -> Effect {
        if full {
            self.last_full = now;
        }
        Effect::Pass { full, trigger }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Effect::*;

    const RESYNC: Duration = Duration::from_secs(5);

    fn started() -> (State, Instant) {
        let t0 = Instant::now();
        (State::new(t0, RESYNC), t0)
    }

    fn full(trigger: Trigger) -> Effect {
        Pass {
            full: true,
            trigger,
        }
    }

    #[test]
    fn the_first_snapshot_makes_the_node_ready_and_writes_subnet_env() {
        let (mut s, t0) = started();
        // Nothing periodic happens before the first snapshot.
        assert!(s
            .on(
                Input::Resync {
                    touched: Some(true)
                },
                t0
            )
            .is_empty());
        let out = s.on(
            Input::Store {
                snapshot: true,
                own_lost: false,
            },
            t0,
        );
        assert_eq!(
            out,
            [
                full(Trigger::Event),
                WriteSubnetEnv,
                Announce,
                Ready,
                NotifyReady
            ]
        );
        assert!(s.ready());
        // A later event goes in alone; a re-list is compared in full, and subnet.env stays.
        let ev = Input::Store {
            snapshot: false,
            own_lost: false,
        };
        assert_eq!(
            s.on(ev, t0)[0],
            Pass {
                full: false,
                trigger: Trigger::Event
            }
        );
        let relist = s.on(
            Input::Store {
                snapshot: true,
                own_lost: false,
            },
            t0,
        );
        assert_eq!(relist, [full(Trigger::Event), NotifyReady]);
    }

    #[test]
    fn events_before_the_snapshot_are_compared_in_full_and_do_not_make_ready() {
        let (mut s, t0) = started();
        let out = s.on(
            Input::Store {
                snapshot: false,
                own_lost: false,
            },
            t0,
        );
        assert_eq!(out, [full(Trigger::Event), NotifyReady]);
        assert!(!s.ready());
    }

    #[test]
    fn a_lost_lease_is_acquired_again_before_a_full_pass() {
        let (mut s, t0) = started();
        s.on(
            Input::Store {
                snapshot: true,
                own_lost: false,
            },
            t0,
        );
        let out = s.on(
            Input::Store {
                snapshot: false,
                own_lost: true,
            },
            t0,
        );
        assert_eq!(
            out,
            [
                Reacquire,
                full(Trigger::Event),
                ScheduleRenewal,
                NotifyReady
            ]
        );
        // The renewal finding it gone does the same.
        assert_eq!(
            s.on(Input::Renewal(Renewal::Lost), t0),
            [Reacquire, full(Trigger::Event), ScheduleRenewal]
        );
        assert_eq!(s.on(Input::Renewal(Renewal::Failed), t0), [RetryRenewal]);
        assert_eq!(
            s.on(Input::Renewal(Renewal::Renewed), t0),
            [ScheduleRenewal]
        );
    }

    #[test]
    fn a_changed_subnet_is_programmed_written_and_announced() {
        let (mut s, t0) = started();
        // Before ready, only the device learns it (subnet.env comes with readiness).
        assert_eq!(s.on(Input::Reacquired { moved: true }, t0), [ProgramLease]);
        s.on(
            Input::Store {
                snapshot: true,
                own_lost: false,
            },
            t0,
        );
        assert_eq!(
            s.on(Input::Reacquired { moved: true }, t0),
            [ProgramLease, WriteSubnetEnv, Announce]
        );
        assert!(s.on(Input::Reacquired { moved: false }, t0).is_empty());
    }

    #[test]
    fn a_burst_of_removals_is_one_repair_after_the_window() {
        let (mut s, t0) = started();
        s.on(
            Input::Store {
                snapshot: true,
                own_lost: false,
            },
            t0,
        );
        for i in 0..1000 {
            assert!(s
                .on(Input::Removed, t0 + Duration::from_micros(i))
                .is_empty());
        }
        // The window opened by the first removal, not pushed on by the rest.
        assert_eq!(s.repair_at(), Some(t0 + repairs::COALESCE));
        assert!(!s.listens_for_removals() && !s.listens_for_rules());
        let due = t0 + repairs::COALESCE;
        assert_eq!(
            s.on(Input::RepairDue, due),
            [full(Trigger::Removed), NotifyReady]
        );
        assert_eq!(s.repair_at(), None);
        // Due twice is one repair.
        assert!(s.on(Input::RepairDue, due).is_empty());
    }

    #[test]
    fn a_rules_change_waits_longer_and_a_removal_widens_it_to_a_full_pass() {
        let (mut s, t0) = started();
        s.on(
            Input::Store {
                snapshot: true,
                own_lost: false,
            },
            t0,
        );
        s.on(Input::RulesChanged, t0);
        assert_eq!(s.repair_at(), Some(t0 + repairs::COALESCE_RULES));
        assert!(!s.listens_for_rules() && s.listens_for_removals());
        s.on(Input::Removed, t0);
        assert_eq!(
            s.on(Input::RepairDue, t0 + repairs::COALESCE),
            [full(Trigger::Removed), NotifyReady]
        );
        s.on(Input::RulesChanged, t0);
        assert_eq!(
            s.on(Input::RepairDue, t0 + repairs::COALESCE_RULES),
            [
                Check {
                    trigger: Trigger::Removed
                },
                NotifyReady
            ]
        );
    }

    #[test]
    fn a_fight_over_one_object_backs_the_repairs_off() {
        let (mut s, t0) = started();
        s.on(
            Input::Store {
                snapshot: true,
                own_lost: false,
            },
            t0,
        );
        let route = || vec![("route", "10.244.7.0/24".to_string())];
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..4 {
            s.on(Input::Removed, now);
            let at = s.repair_at().unwrap();
            waits.push(at - now);
            s.on(Input::RepairDue, at);
            let out = s.on(Input::Restored(route()), at);
            now = at + Duration::from_millis(1);
            if waits.len() > 1 {
                assert_eq!(out, [Conflicts(vec!["route"])]);
            } else {
                assert!(out.is_empty(), "the first repair is no fight");
            }
        }
        // The second repair is known to be a fight only once it is done; from then on
        // each waits twice as long as the one before.
        assert_eq!(waits[..2], [repairs::COALESCE, repairs::COALESCE]);
        assert!(waits[2] > waits[1] && waits[3] > waits[2], "{waits:?}");
        assert!(waits.iter().all(|w| *w <= RESYNC), "capped at the resync");
        assert_eq!(s.repairs().conflicts()[0].repairs, 3);
        // Removals before the node is ready wait for its first full pass instead.
        let (mut fresh, t) = started();
        fresh.on(Input::Removed, t);
        assert!(fresh.on(Input::RepairDue, t + repairs::COALESCE).is_empty());
    }

    #[test]
    fn resyncs_read_the_kernel_only_when_needed() {
        let (mut s, t0) = started();
        s.on(
            Input::Store {
                snapshot: true,
                own_lost: false,
            },
            t0,
        );
        let t = t0 + RESYNC;
        let light = [
            Check {
                trigger: Trigger::Resync,
            },
            NotifyReady,
        ];
        assert_eq!(
            s.on(
                Input::Resync {
                    touched: Some(false)
                },
                t
            ),
            light
        );
        assert_eq!(
            s.on(
                Input::Resync {
                    touched: Some(true)
                },
                t
            ),
            [RefreshPolicy, full(Trigger::Resync), NotifyReady]
        );
        assert_eq!(
            s.on(Input::Resync { touched: None }, t)[1],
            full(Trigger::Resync),
            "no monitor: every resync reads the kernel"
        );
        // The backstop: a full pass at least every FULL_PASS_BACKSTOP.
        let late = t + schedule::FULL_PASS_BACKSTOP;
        assert_eq!(
            s.on(
                Input::Resync {
                    touched: Some(false)
                },
                late
            )[1],
            full(Trigger::Resync)
        );
        assert_eq!(
            s.on(
                Input::Resync {
                    touched: Some(false)
                },
                late
            ),
            light
        );
    }

    #[test]
    fn a_refused_reload_changes_nothing() {
        let (mut s, t0) = started();
        for read in [ReloadRead::Unchanged, ReloadRead::Refused("bad".into())] {
            assert!(s.on(Input::Reload(read), t0).is_empty());
        }
        assert_eq!(s.on(Input::Reload(ReloadRead::Changed), t0), [ApplyConfig]);
    }

    #[test]
    fn an_applied_config_re_leases_only_when_the_lease_no_longer_serves() {
        let (mut s, t0) = started();
        assert_eq!(
            s.on(Input::ConfigApplied { keeps_lease: true }, t0),
            [ProgramLease, RefreshPolicy, full(Trigger::Event), Announce]
        );
        s.on(
            Input::Store {
                snapshot: true,
                own_lost: false,
            },
            t0,
        );
        assert_eq!(
            s.on(Input::ConfigApplied { keeps_lease: false }, t0),
            [
                Reacquire,
                ProgramLease,
                RefreshPolicy,
                full(Trigger::Event),
                WriteSubnetEnv,
                Announce
            ]
        );
    }

    #[test]
    fn a_deleted_device_is_refilled_at_once() {
        let (mut s, t0) = started();
        assert_eq!(
            s.on(Input::DeviceDeleted, t0),
            [full(Trigger::DeviceDeleted)]
        );
    }
}
