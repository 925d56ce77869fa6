//! User and group names to ids, from /etc/passwd and /etc/group (files only: NSS sources such
//! as LDAP are not consulted; numeric ids always work).

/// Resolves `user` and `group` to (uid, gid); the group defaults to the user's primary group.
/// `Ok(None)` when neither is set.
pub(crate) fn resolve(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<(u32, u32)>, String> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let (uid, user_gid) = match user {
        None => (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        ),
        Some(u) => lookup_user(u)?,
    };
    let gid = match group {
        None => user_gid,
        Some(g) => lookup_group(g)?,
    };
    Ok(Some((uid, gid)))
}

fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && (f[0] == name || f[2] == name) {
            let uid = f[2]
                .parse()
                .map_err(|_| format!("bad uid for {name} in /etc/passwd"))?;
            let gid = f[3]
                .parse()
                .map_err(|_| format!("bad gid for {name} in /etc/passwd"))?;
            return Ok((uid, gid));
        }
    }
    match name.parse::<u32>() {
        Ok(uid) => Ok((uid, uid)),
        Err(_) => Err(format!("user {name:?} is not in /etc/passwd")),
    }
}

fn lookup_group(name: &str) -> Result<u32, String> {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    for line in groups.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 3 && (f[0] == name || f[2] == name) {
            return f[2]
                .parse()
                .map_err(|_| format!("bad gid for {name} in /etc/group"));
        }
    }
    name.parse()
        .map_err(|_| format!("group {name:?} is not in /etc/group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_numbers_resolve() {
        assert_eq!(resolve(None, None).unwrap(), None);
        assert_eq!(resolve(Some("root"), None).unwrap(), Some((0, 0)));
        assert_eq!(
            resolve(Some("4242"), Some("4343")).unwrap(),
            Some((4242, 4343))
        );
        assert!(
            resolve(Some("no-such-user-here"), None)
                .unwrap_err()
                .contains("not in /etc/passwd")
        );
    }
}
