//! The checks after every step: every live process lists the same ports, answers meet the
//! step's expectation, and in a fault case an operation happened everywhere or nowhere.

use super::*;

/// Removes terminal colour sequences (`ESC [ ... m`) from captured output.
pub(super) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' && it.peek() == Some(&'[') {
            for d in it.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a hotplug_mp answer reports a failure.
pub fn is_failure(answer: &str) -> bool {
    let a = answer.trim_start();
    a.starts_with("failed") || a.starts_with("cannot") || a.starts_with("unknown command")
}

pub(super) fn fmt_view(v: &View) -> String {
    if v.is_empty() {
        "(no ports)".into()
    } else {
        v.iter().map(|(i, n)| format!("{i} {n}")).collect::<Vec<_>>().join(", ")
    }
}

pub(super) fn last_lines(s: &str) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let k = v.len().saturating_sub(3);
    let t = v[k..].join(" | ");
    if t.is_empty() {
        "no output on stderr".into()
    } else {
        t
    }
}

pub(super) fn check_views(views: &[Listing], want: Option<&View>) -> Result<View, String> {
    let mut first: Option<(&str, &View)> = None;
    for (n, v) in views {
        let v = v.as_ref().map_err(|e| format!("{n}: {e}"))?;
        match first {
            None => first = Some((n, v)),
            Some((fname, fv)) if fv != v => {
                return Err(format!("{fname} lists {} but {n} lists {}", fmt_view(fv), fmt_view(v)))
            }
            _ => {}
        }
    }
    let view = first.map(|(_, v)| v.clone()).unwrap_or_default();
    if let Some(w) = want {
        if *w != view {
            return Err(format!("every process lists {}, expected {}", fmt_view(&view), fmt_view(w)));
        }
    }
    Ok(view)
}

/// Checks an answer against what the step expects (normal runs).
pub(super) fn check_answer(s: &Step, answer: &str) -> Result<(), String> {
    match (&s.expect, &s.action) {
        (Expect::Any, _) => Ok(()),
        (Expect::Failure(want), _) => {
            if !is_failure(answer) {
                Err(format!("answered {answer:?}, expected a failure containing {want:?}"))
            } else if !answer.contains(want.as_str()) {
                Err(format!("answered {answer:?}, expected it to contain {want:?}"))
            } else {
                Ok(())
            }
        }
        (Expect::Ok, Action::Send { port, count, .. }) => {
            let want = format!("sent {count} packets on port {port}");
            if answer == want {
                Ok(())
            } else {
                Err(format!("answered {answer:?}, expected {want:?}"))
            }
        }
        (Expect::Ok, Action::Recv { count, exact, .. }) => {
            let n = answer
                .strip_prefix("received ")
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| format!("answered {answer:?}, expected \"received N packets ...\""))?;
            match exact {
                Some(e) if n != *e => Err(format!("received {n} packets, expected exactly {e}")),
                None if n < *count => Err(format!("received {n} packets, expected at least {count}")),
                _ => Ok(()),
            }
        }
        (Expect::Ok, _) => {
            if is_failure(answer) {
                Err(format!("answered {answer:?}, expected success"))
            } else {
                Ok(())
            }
        }
    }
}

/// The state an attach or detach leads to when it happens (names only: ids are the protocol's).
pub(super) fn names_of(v: &View) -> Vec<String> {
    let mut n: Vec<String> = v.iter().map(|(_, n)| n.clone()).collect();
    n.sort();
    n
}

pub(super) fn device_of(action: &Action, before: &View) -> Option<String> {
    let t = match action {
        Action::Attach(a) | Action::Detach(a) => a,
        _ => return None,
    };
    if let Ok(id) = t.trim().parse::<u16>() {
        return before.iter().find(|(i, _)| *i == id).map(|(_, n)| n.clone());
    }
    lab_core::devargs::Devargs::parse(t).ok().map(|d| d.name().to_string())
}

/// The sweep invariant for one hotplug step: `after` is `before` (nothing happened) or the
/// operation's result (it happened everywhere); a failed answer allows only `before`.
pub(super) fn check_all_or_nothing(
    action: &Action,
    before: &View,
    after: &View,
    answered: Option<bool>,
) -> Result<(), String> {
    let same_ids = after.iter().all(|(i, n)| before.iter().all(|(bi, bn)| bn != n || bi == i));
    if !same_ids {
        return Err(format!("a port changed its id: before {}, after {}", fmt_view(before), fmt_view(after)));
    }
    if after == before {
        return Ok(());
    }
    if answered == Some(false) {
        return Err(format!(
            "the step failed but the ports changed: before {}, after {}",
            fmt_view(before),
            fmt_view(after)
        ));
    }
    let Some(dev) = device_of(action, before) else {
        return Err(format!("ports changed on a step that is no hotplug operation: {}", fmt_view(after)));
    };
    let mut want = names_of(before);
    match action {
        Action::Attach(_) => {
            if !want.contains(&dev) {
                want.push(dev);
                want.sort();
            }
        }
        _ => want.retain(|n| *n != dev),
    }
    if names_of(after) == want {
        Ok(())
    } else {
        Err(format!(
            "partial operation: before {}, after {}, expected {} or no change",
            fmt_view(before),
            fmt_view(after),
            want.join(", ")
        ))
    }
}
