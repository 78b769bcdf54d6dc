//! An ordered list of variables with lookups by name in constant time, for the planner's env.

use std::collections::HashMap;

/// Variables in definition order, indexed by name, so that a Dockerfile of 100,000 `ENV` or
/// `ARG` lines plans in linear time.
///
/// [`EnvList::set`] replaces a value in place (the image config's `Env`); [`EnvList::set_last`]
/// moves the variable to the end (LLB's `EnvList`, whose order is part of RUN's cache key).
#[derive(Clone, Debug, Default)]
pub(crate) struct EnvList {
    /// Entries in order; `None` where a variable was moved to the end.
    entries: Vec<Option<(String, String)>>,
    /// The position in `entries` of the first entry of each name.
    index: HashMap<String, usize>,
    /// Entries that are `Some`.
    live: usize,
    /// Bytes of the names and values of the entries that are `Some`.
    bytes: usize,
    /// Whether some name has several entries (only a base image's env can have that).
    has_duplicates: bool,
}

impl EnvList {
    /// The list of `pairs` as given, duplicates included.
    pub(crate) fn from_pairs(pairs: &[(String, String)]) -> Self {
        let mut list = EnvList::default();
        for (key, value) in pairs {
            let pos = list.entries.len();
            list.entries.push(Some((key.clone(), value.clone())));
            list.live += 1;
            list.bytes += key.len() + value.len();
            if list.index.contains_key(key) {
                list.has_duplicates = true;
            } else {
                list.index.insert(key.clone(), pos);
            }
        }
        list
    }

    /// The value of the first entry named `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        let pos = *self.index.get(key)?;
        self.entries[pos].as_ref().map(|(_, value)| value.as_str())
    }

    /// Sets `key`, keeping its place when it is there already.
    pub(crate) fn set(&mut self, key: &str, value: &str) {
        match self.index.get(key) {
            Some(&pos) => {
                let entry = self.entries[pos]
                    .as_mut()
                    .expect("indexed entries are live");
                self.bytes = self.bytes - entry.1.len() + value.len();
                entry.1 = value.to_owned();
            }
            None => self.push(key, value),
        }
    }

    /// Sets `key` and moves it to the end, dropping every earlier entry of that name.
    pub(crate) fn set_last(&mut self, key: &str, value: &str) {
        if self.has_duplicates {
            self.entries
                .retain(|entry| entry.as_ref().is_some_and(|(k, _)| k != key));
            self.reindex();
        } else if let Some(pos) = self.index.remove(key)
            && let Some((key, value)) = self.entries[pos].take()
        {
            self.live -= 1;
            self.bytes -= key.len() + value.len();
        }
        self.push(key, value);
        // Compact once moved-away entries outnumber the live ones, so the list stays linear.
        if self.entries.len() > 2 * self.live + 16 {
            self.entries.retain(Option::is_some);
            self.reindex();
        }
    }

    fn push(&mut self, key: &str, value: &str) {
        self.index.insert(key.to_owned(), self.entries.len());
        self.entries.push(Some((key.to_owned(), value.to_owned())));
        self.live += 1;
        self.bytes += key.len() + value.len();
    }

    fn reindex(&mut self) {
        self.index.clear();
        self.has_duplicates = false;
        self.live = 0;
        self.bytes = 0;
        for (pos, entry) in self.entries.iter().enumerate() {
            let Some((key, value)) = entry else { continue };
            self.live += 1;
            self.bytes += key.len() + value.len();
            if self.index.contains_key(key) {
                self.has_duplicates = true;
            } else {
                self.index.insert(key.clone(), pos);
            }
        }
    }

    /// The entries in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .flatten()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    /// The entries in order, as owned pairs.
    pub(crate) fn to_vec(&self) -> Vec<(String, String)> {
        self.entries.iter().flatten().cloned().collect()
    }

    /// Whether the list has no entries.
    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Bytes of all names and values.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &EnvList) -> Vec<(&str, &str)> {
        list.iter().collect()
    }

    #[test]
    fn set_keeps_place_and_set_last_moves_to_the_end() {
        let mut list = EnvList::from_pairs(&[("A".into(), "1".into()), ("B".into(), "2".into())]);
        list.set("A", "3");
        assert_eq!(pairs(&list), [("A", "3"), ("B", "2")]);
        list.set_last("A", "4");
        assert_eq!(pairs(&list), [("B", "2"), ("A", "4")]);
        list.set("C", "5");
        assert_eq!(list.get("A"), Some("4"));
        assert_eq!(list.get("Z"), None);
        assert_eq!(list.len(), 3);
        assert_eq!(list.bytes(), 6);
        for i in 0..100 {
            list.set_last("B", &i.to_string());
        }
        assert_eq!(pairs(&list), [("A", "4"), ("C", "5"), ("B", "99")]);
        assert!(list.entries.len() < 40, "compacted");
    }

    #[test]
    fn duplicates_of_a_base_env_behave_as_a_plain_list() {
        let mut list = EnvList::from_pairs(&[
            ("A".into(), "1".into()),
            ("B".into(), "2".into()),
            ("A".into(), "3".into()),
        ]);
        assert_eq!(list.get("A"), Some("1"));
        list.set("A", "x");
        assert_eq!(pairs(&list), [("A", "x"), ("B", "2"), ("A", "3")]);
        list.set_last("A", "y");
        assert_eq!(pairs(&list), [("B", "2"), ("A", "y")]);
        assert!(!list.has_duplicates);
        assert_eq!(list.bytes(), 4);
    }
}
