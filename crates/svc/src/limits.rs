//! Process limits a server sets for itself at start.

/// Raises the soft limit on open files to the hard limit, and returns the limit in effect (the soft one, raised or
/// not). A server that holds one descriptor per client must not stop at a distribution's default of 1,024 when the
/// hard limit allows more; the hard limit itself is the operator's to set.
pub fn raise_nofile_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_in_effect_is_returned_and_never_lowered() {
        use nix::sys::resource::{Resource, getrlimit};
        let (before, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let limit = raise_nofile_limit();
        let (after, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(limit, after);
        assert!(after >= before);
        assert!(after <= hard);
    }
}
