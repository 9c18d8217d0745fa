//! `ClassAd`: an ordered set of named expressions with case-insensitive names.

use std::collections::HashMap;

use crate::ast::Expr;

/// A ClassAd: attribute names (case-insensitive, case preserved) bound to expressions.
///
/// Insertion order is kept; the printers choose their own order where HTCondor does
/// (the hook format sorts by name).
#[derive(Debug, Clone, Default)]
pub struct ClassAd {
    attrs: Vec<(String, Expr)>,
    index: HashMap<String, usize>,
}

impl ClassAd {
    /// An empty ad.
    pub fn new() -> ClassAd {
        ClassAd::default()
    }

    /// Bind `name` to `expr`, replacing any attribute of the same name (in any case).
    pub fn insert(&mut self, name: impl Into<String>, expr: Expr) {
        let name = name.into();
        let key = name.to_ascii_lowercase();
        if let Some(&i) = self.index.get(&key) {
            if let Some(slot) = self.attrs.get_mut(i) {
                *slot = (name, expr);
                return;
            }
        }
        self.index.insert(key, self.attrs.len());
        self.attrs.push((name, expr));
    }

    /// The expression bound to `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&Expr> {
        self.index
            .get(&name.to_ascii_lowercase())
            .and_then(|&i| self.attrs.get(i))
            .map(|(_, e)| e)
    }

    /// The name as stored (its original case), if present.
    pub fn name_of(&self, name: &str) -> Option<&str> {
        self.index
            .get(&name.to_ascii_lowercase())
            .and_then(|&i| self.attrs.get(i))
            .map(|(n, _)| n.as_str())
    }

    /// Remove `name`, returning its expression.
    pub fn remove(&mut self, name: &str) -> Option<Expr> {
        let i = self.index.remove(&name.to_ascii_lowercase())?;
        if i >= self.attrs.len() {
            return None;
        }
        let (_, expr) = self.attrs.remove(i);
        for v in self.index.values_mut() {
            if *v > i {
                *v -= 1;
            }
        }
        Some(expr)
    }

    /// True when `name` is bound.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(&name.to_ascii_lowercase())
    }

    /// Number of attributes.
    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    /// True when there are no attributes.
    pub fn is_empty(&self) -> bool {
        self.attrs.is_empty()
    }

    /// Attributes in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Expr)> {
        self.attrs.iter().map(|(n, e)| (n.as_str(), e))
    }

    /// Attributes sorted byte-wise by name, as HTCondor's `sPrintAd` orders them.
    pub fn sorted(&self) -> Vec<(&str, &Expr)> {
        let mut v: Vec<_> = self.iter().collect();
        v.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        v
    }

    /// Copy every attribute of `other` into this ad (later wins), as `ClassAd::Update` does.
    pub fn update(&mut self, other: &ClassAd) {
        for (n, e) in other.iter() {
            self.insert(n, e.clone());
        }
    }
}

/// Ads are equal when they bind the same names (ignoring case and order) to equal expressions.
impl PartialEq for ClassAd {
    fn eq(&self, other: &ClassAd) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(n, e)| other.get(n).is_some_and(|o| o == e))
    }
}

impl FromIterator<(String, Expr)> for ClassAd {
    fn from_iter<T: IntoIterator<Item = (String, Expr)>>(iter: T) -> ClassAd {
        let mut ad = ClassAd::new();
        for (n, e) in iter {
            ad.insert(n, e);
        }
        ad
    }
}
