//! Who is logged in: a set of user ids, one bit per account.
//!
//! [`Online`] owns one invariant: `len` is the number of bits set. Ids
//! are dense (the index of an account in the list), so a bit each costs
//! an eighth of a byte per account, allocated at start for the accounts
//! known then: logging in allocates nothing, and nothing small and
//! long-lived is left scattered through the heap by a burst of logins
//! (a tree's nodes were, and each kept a page of freed memory from going
//! back to the system). Iteration is in id order, as a sorted set's.
//!
//! It does not know what being online means; the core keeps it in step
//! with the sessions.

use super::UserId;

/// A set of user ids.
#[derive(Debug, Default)]
pub struct Online {
    words: Vec<u64>,
    len: usize,
}

impl Online {
    /// An empty set with room for ids below `accounts`.
    pub fn with_accounts(accounts: usize) -> Self {
        Online { words: vec![0; accounts.div_ceil(64)], len: 0 }
    }

    /// Adds `user`; true if it was not there.
    pub fn insert(&mut self, user: UserId) -> bool {
        let (word, bit) = (user / 64, 1u64 << (user % 64));
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let added = self.words[word] & bit == 0;
        self.words[word] |= bit;
        self.len += usize::from(added);
        added
    }

    /// Removes `user`; true if it was there.
    pub fn remove(&mut self, user: UserId) -> bool {
        let (word, bit) = (user / 64, 1u64 << (user % 64));
        let Some(w) = self.words.get_mut(word) else {
            return false;
        };
        let removed = *w & bit != 0;
        *w &= !bit;
        self.len -= usize::from(removed);
        removed
    }

    pub fn contains(&self, user: UserId) -> bool {
        self.words.get(user / 64).is_some_and(|w| w & (1u64 << (user % 64)) != 0)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The ids in the set, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = UserId> + '_ {
        self.words.iter().enumerate().flat_map(|(index, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(index * 64 + bit)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn behaves_as_a_sorted_set_and_counts_its_members() {
        let mut online = Online::with_accounts(100);
        let mut model = BTreeSet::new();
        // A fixed walk of inserts and removes, past the room made at start.
        let mut x: usize = 7;
        for _ in 0..2000 {
            x = (x * 1103515245 + 12345) % 2_147_483_648;
            let user = x % 300;
            if x.is_multiple_of(3) {
                assert_eq!(online.remove(user), model.remove(&user));
            } else {
                assert_eq!(online.insert(user), model.insert(user));
            }
            assert_eq!(online.len(), model.len());
        }
        assert_eq!(online.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
        for user in 0..400 {
            assert_eq!(online.contains(user), model.contains(&user));
        }
        assert!(!online.remove(10_000), "an id past the end is not there");
    }

    #[test]
    fn a_login_allocates_nothing_for_accounts_known_at_start() {
        let mut online = Online::with_accounts(1000);
        let room = online.words.capacity();
        for user in 0..1000 {
            online.insert(user);
        }
        assert_eq!(online.words.capacity(), room);
        assert_eq!(online.len(), 1000);
    }
}
