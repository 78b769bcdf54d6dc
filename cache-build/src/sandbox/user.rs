//! `USER` resolution against a root filesystem's `/etc/passwd` and `/etc/group`, with runc's rules.

/// Highest id runc accepts for a numeric user or group.
const MAX_ID: u32 = i32::MAX as u32;

/// The credentials a command runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExecUser {
    /// User id.
    pub(crate) uid: u32,
    /// Primary group id.
    pub(crate) gid: u32,
    /// Supplementary group ids.
    pub(crate) sgids: Vec<u32>,
    /// Home directory, used for `HOME` when the environment has none.
    pub(crate) home: String,
}

/// Why a `USER` value could not be resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LookupError {
    /// The user name is not in `/etc/passwd` (or there is no `/etc/passwd`).
    User { name: String, has_passwd: bool },
    /// The group name is not in `/etc/group` (or there is no `/etc/group`).
    Group { name: String, has_group: bool },
    /// A numeric id is out of range.
    Range { id: String },
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// Parses a numeric id the way `USER` does: decimal digits only.
fn parse_id(field: &str) -> Option<Result<u32, ()>> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(match field.parse::<u64>() {
        Ok(id) if id <= u64::from(MAX_ID) => Ok(id as u32),
        _ => Err(()),
    })
}

/// Lines of a passwd/group file that are entries (skips blanks, comments and NIS `+`/`-` lines).
fn entry_lines(file: &str) -> impl Iterator<Item = &str> {
    file.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(['+', '-']))
}

fn passwd_entries(file: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    entry_lines(file).filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        Some(PasswdEntry {
            name: fields.first().copied()?,
            uid: fields.get(2)?.parse().ok()?,
            gid: fields.get(3)?.parse().ok()?,
            home: fields.get(5).copied().unwrap_or(""),
        })
    })
}

fn group_entries(file: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    entry_lines(file).filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        Some(GroupEntry {
            name: fields.first().copied()?,
            gid: fields.get(2)?.parse().ok()?,
            members: fields
                .get(3)
                .map(|list| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        })
    })
}

/// Resolves a `USER` value (`""`, `user`, `uid`, `user:group`, `uid:gid`, …) like runc's `GetExecUser`.
///
/// A numeric user is always a uid, found in `passwd` or not; a name must be in `passwd`.
/// Supplementary groups come from `group` only when no group is given explicitly.
/// Without a matching entry the home directory is `/`.
pub(crate) fn resolve(
    spec: Option<&str>,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, LookupError> {
    let spec = spec.unwrap_or("");
    let mut parts = spec.split(':');
    let user_arg = parts.next().unwrap_or("").trim();
    let group_arg = parts.next().unwrap_or("").trim();

    let uid_arg = match parse_id(user_arg) {
        Some(Ok(uid)) => Some(uid),
        Some(Err(())) => {
            return Err(LookupError::Range {
                id: user_arg.to_owned(),
            });
        }
        None => None,
    };
    let gid_arg = match parse_id(group_arg) {
        Some(Ok(gid)) => Some(gid),
        Some(Err(())) => {
            return Err(LookupError::Range {
                id: group_arg.to_owned(),
            });
        }
        None => None,
    };

    let mut user = ExecUser {
        uid: 0,
        gid: 0,
        sgids: Vec::new(),
        home: "/".to_owned(),
    };

    let matched = passwd.and_then(|file| {
        passwd_entries(file).find(|entry| {
            if user_arg.is_empty() {
                entry.uid == 0
            } else if let Some(uid) = uid_arg {
                entry.uid == uid
            } else {
                entry.name == user_arg
            }
        })
    });
    let matched_name = match matched {
        Some(entry) => {
            user.uid = entry.uid;
            user.gid = entry.gid;
            if !entry.home.is_empty() {
                user.home = entry.home.to_owned();
            }
            Some(entry.name.to_owned())
        }
        None if user_arg.is_empty() => None,
        None => match uid_arg {
            Some(uid) => {
                user.uid = uid;
                None
            }
            None => {
                return Err(LookupError::User {
                    name: user_arg.to_owned(),
                    has_passwd: passwd.is_some(),
                });
            }
        },
    };

    if !group_arg.is_empty() {
        let found = group.and_then(|file| {
            group_entries(file).find(|entry| match gid_arg {
                Some(gid) => entry.gid == gid,
                None => entry.name == group_arg,
            })
        });
        user.gid = match (found, gid_arg) {
            (Some(entry), _) => entry.gid,
            (None, Some(gid)) => gid,
            (None, None) => {
                return Err(LookupError::Group {
                    name: group_arg.to_owned(),
                    has_group: group.is_some(),
                });
            }
        };
    } else if let (Some(name), Some(file)) = (matched_name, group) {
        user.sgids = group_entries(file)
            .filter(|entry| entry.members.contains(&name.as_str()))
            .map(|entry| entry.gid)
            .collect();
    }
    Ok(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "# comment\nroot:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\napp:x:1000:1001:App:/home/app:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:root\nbin:x:1:root,daemon\nwheel:x:10:root,app\napp:x:1001:\nstaff:x:50:app\n";

    fn check(spec: Option<&str>, expect: Result<(u32, u32, &[u32], &str), LookupError>) {
        let got = resolve(spec, Some(PASSWD), Some(GROUP));
        let expect = expect.map(|(uid, gid, sgids, home)| ExecUser {
            uid,
            gid,
            sgids: sgids.to_vec(),
            home: home.to_owned(),
        });
        assert_eq!(got, expect, "USER {spec:?}");
    }

    #[test]
    fn default_is_root_with_its_groups_and_home() {
        check(None, Ok((0, 0, &[0, 1, 10], "/root")));
        check(Some(""), Ok((0, 0, &[0, 1, 10], "/root")));
    }

    #[test]
    fn names_resolve_through_passwd_and_group() {
        check(Some("app"), Ok((1000, 1001, &[10, 50], "/home/app")));
        check(Some("app:staff"), Ok((1000, 50, &[], "/home/app")));
        check(Some("app:7"), Ok((1000, 7, &[], "/home/app")));
        check(Some("daemon"), Ok((1, 1, &[1], "/usr/sbin")));
    }

    #[test]
    fn numeric_ids_need_no_entry() {
        check(Some("1000"), Ok((1000, 1001, &[10, 50], "/home/app")));
        check(Some("4242"), Ok((4242, 0, &[], "/")));
        check(Some("4242:4343"), Ok((4242, 4343, &[], "/")));
        check(Some("4242:wheel"), Ok((4242, 10, &[], "/")));
    }

    #[test]
    fn unknown_names_are_errors() {
        check(
            Some("nobody"),
            Err(LookupError::User {
                name: "nobody".into(),
                has_passwd: true,
            }),
        );
        check(
            Some("app:nogroup"),
            Err(LookupError::Group {
                name: "nogroup".into(),
                has_group: true,
            }),
        );
        check(
            Some("99999999999"),
            Err(LookupError::Range {
                id: "99999999999".into(),
            }),
        );
        assert_eq!(
            resolve(Some("app"), None, None),
            Err(LookupError::User {
                name: "app".into(),
                has_passwd: false,
            })
        );
    }

    #[test]
    fn without_files_numeric_users_work() {
        let user = resolve(Some("12:34"), None, None).expect("numeric user needs no passwd");
        assert_eq!((user.uid, user.gid, user.home.as_str()), (12, 34, "/"));
        let root = resolve(None, None, None).expect("root needs no passwd");
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/"));
    }
}
