//! The connection cap the process can keep: every connection holds a file
//! descriptor, so the cap is bounded by `RLIMIT_NOFILE`. The soft limit is
//! raised toward the hard one first (as Go's runtime does), since container
//! defaults often set a soft 1,024 under a much higher hard limit.

/// Descriptors kept back from connections: the models' files, the queue,
/// store and telemetry clients' sockets, logs.
const RESERVED: u64 = 128;

/// The cap to enforce for `configured` connections: `configured`, or what
/// the descriptor limit leaves once raised as far as allowed.
pub(crate) fn connection_cap(configured: usize) -> usize {
    let wanted = configured as u64 + RESERVED;
    match raise_open_files_limit(wanted) {
        Some(limit) if limit < wanted => {
            let cap = limit.saturating_sub(RESERVED).max(1) as usize;
            tracing::warn!(
                configured,
                cap,
                open_files_limit = limit,
                "max_connections is above what the open-files limit allows; capping it"
            );
            cap
        }
        _ => configured,
    }
}

/// Raises the soft open-files limit to `wanted` (or the hard limit, if
/// lower) and returns the soft limit now in force; `None` where it cannot
/// be read.
#[cfg(unix)]
#[allow(unsafe_code)]
#[allow(clippy::unnecessary_cast)] // rlim_t is narrower than u64 on some targets
fn raise_open_files_limit(wanted: u64) -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let soft = limit.rlim_cur as u64;
    let hard = limit.rlim_max as u64;
    if soft >= wanted {
        return Some(soft);
    }
    let raised = libc::rlimit {
        rlim_cur: wanted.min(hard) as libc::rlim_t,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        tracing::debug!(
            from = soft,
            to = raised.rlim_cur as u64,
            "raised the open-files limit"
        );
        Some(raised.rlim_cur as u64)
    } else {
        Some(soft)
    }
}

#[cfg(not(unix))]
fn raise_open_files_limit(_wanted: u64) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_configured_cap_is_kept() {
        assert_eq!(connection_cap(10), 10);
    }

    #[cfg(unix)]
    #[test]
    #[allow(unsafe_code)]
    #[allow(clippy::unnecessary_cast)]
    fn a_cap_past_the_hard_limit_is_bounded_by_it() {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        let cap = connection_cap(10_000_000) as u64;
        if limit.rlim_max == libc::RLIM_INFINITY {
            assert_eq!(cap, 10_000_000, "no hard limit: the configured cap stands");
        } else {
            let hard = limit.rlim_max as u64;
            assert!(
                cap <= hard.saturating_sub(RESERVED).max(1),
                "cap {cap} with a hard limit of {hard}"
            );
        }
    }
}
