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

/// What choosing the underlay again (the host's links or addresses changed) gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selected {
    /// The same interface, address and MTU as now.
    Same,
    /// Another interface, index, address or MTU: the node moves to it.
    Moved,
    /// Nothing matches the selection flags now; why.
    Lost(String),
}

/// How long the host's links and addresses may keep changing (an interface re-created,
/// then addressed, then brought up) before the underlay is chosen again.
pub const UNDERLAY_SETTLE: Duration = Duration::from_millis(200);

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
    /// The host's links or addresses changed.
    HostChanged,
    /// The settling wait after a host change is over.
    UnderlayDue,
    UnderlaySelected(Selected),
    /// The device is on the new underlay; `attrs_changed` when the lease must say so (a
    /// new PublicIP or PublicIPv6).
    UnderlayApplied {
        attrs_changed: bool,
    },
    /// What republishing the lease gave: `false` when it was no longer ours.
    Republished {
        ours: bool,
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
    /// Choose the underlay again as at start; answers `UnderlaySelected`.
    SelectUnderlay,
    /// No interface matches: say so (once) and stop programming until one does.
    UnderlayLost(String),
    /// An interface matches again after none did.
    UnderlayBack,
    /// Move the device to the new underlay; answers `UnderlayApplied`.
    ApplyUnderlay,
    /// Publish the lease's new attributes, keeping its subnet; answers `Republished`.
    Republish,
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
    /// When the underlay is to be chosen again, after a host change settles.
    underlay_check: Option<Instant>,
    /// No interface matches the selection flags (nothing is programmed meanwhile).
    underlay_lost: bool,
}

impl State {
    pub fn new(now: Instant, cap: Duration) -> Self {
        State {
            ready: false,
            last_full: now,
            repair: None,
            repairs: Repairs::default(),
            cap,
            underlay_check: None,
            underlay_lost: false,
        }
    }

    /// When the underlay is to be chosen again, for the executor's timer.
    pub fn underlay_check_at(&self) -> Option<Instant> {
        self.underlay_check
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
                if !self.ready || self.underlay_lost {
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
            // Without an underlay there is no parent to make the device on: it comes back
            // with the underlay.
            Input::DeviceDeleted if self.underlay_lost => vec![],
            Input::DeviceDeleted => vec![self.pass(true, Trigger::DeviceDeleted, now)],
            Input::Resync { touched } => {
                if !self.ready || self.underlay_lost {
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
            Input::HostChanged => {
                if self.underlay_check.is_none() {
                    self.underlay_check = Some(now + UNDERLAY_SETTLE);
                }
                vec![]
            }
            Input::UnderlayDue => {
                self.underlay_check = None;
                vec![SelectUnderlay]
            }
            Input::UnderlaySelected(Selected::Same) if self.underlay_lost => {
                self.underlay_lost = false;
                // Whatever was skipped meanwhile is caught up by one full pass.
                vec![
                    UnderlayBack,
                    self.pass(true, Trigger::Event, now),
                    NotifyReady,
                ]
            }
            Input::UnderlaySelected(Selected::Same) => vec![],
            Input::UnderlaySelected(Selected::Lost(why)) => {
                let first = !self.underlay_lost;
                self.underlay_lost = true;
                if first {
                    vec![UnderlayLost(why)]
                } else {
                    vec![]
                }
            }
            Input::UnderlaySelected(Selected::Moved) => {
                let mut out = Vec::new();
                if self.underlay_lost {
                    self.underlay_lost = false;
                    out.push(UnderlayBack);
                }
                out.push(ApplyUnderlay);
                out
            }
            Input::UnderlayApplied { attrs_changed } => {
                let mut out = self.settled(attrs_changed.then_some(Republish), now);
                out.push(NotifyReady);
                out
            }
            Input::Republished { ours: true } => vec![],
            // Someone else holds it now: lease again, as when it is lost.
            Input::Republished { ours: false } => vec![Reacquire],
            Input::Reload(ReloadRead::Changed) => vec![ApplyConfig],
            Input::Reload(_) => vec![],
            // Out of the new range, or what we advertise changed: lease again (the
            // allocator prefers the same subnet).
            Input::ConfigApplied { keeps_lease } => {
                self.settled((!keeps_lease).then_some(Reacquire), now)
            }
        }
    }

    /// What follows new settings (a reload, a moved underlay): the lease's own step, if
    /// any, then the lease on the device (checked against the new Network even when it
    /// stays), peers judged again, one full pass, subnet.env and BGP.
    fn settled(&mut self, lease: Option<Effect>, now: Instant) -> Vec<Effect> {
        let mut out: Vec<Effect> = lease.into_iter().collect();
        out.extend([
            Effect::ProgramLease,
            Effect::RefreshPolicy,
            self.pass(true, Trigger::Event, now),
        ]);
        if self.ready {
            out.push(Effect::WriteSubnetEnv);
        }
        out.push(Effect::Announce);
        out
    }

    fn pass(&mut self, full: bool, trigger: Trigger, now: Instant) -> Effect {
        if full {
            self.last_full = now;
        }
        Effect::Pass { full, trigger }
    }
}

#[cfg(test)]
mod tests;
