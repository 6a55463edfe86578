//! Which completions belong to which image.
//!
//! RL frameworks hand rewards a flat batch of completions. trl keeps the K samples of a prompt
//! contiguous; verl may reorder the batch, so a group can be scattered. `Groups` stores both as a
//! compressed layout (members of group 0, then group 1, …) plus the original position of each
//! member, so every reward sees its own group's members without copying predictions around.

use crate::error::{Error, Result};

/// Partition of `len()` completions into `num_groups()` non-empty groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    /// `offsets[g]..offsets[g + 1]` indexes `items` for group g.
    offsets: Vec<usize>,
    /// Original positions of the members, group by group, in input order within a group.
    items: Vec<usize>,
    /// Whether `items` is 0, 1, 2, … (contiguous groups in order).
    contiguous: bool,
}

impl Groups {
    /// `num_groups` consecutive groups of `size` completions each (trl's layout).
    pub fn uniform(num_groups: usize, size: usize) -> Result<Self> {
        if num_groups == 0 {
            return Err(Error::Empty { arg: "gt" });
        }
        if size == 0 {
            return Err(Error::Parameter {
                arg: "num_generations",
                value: 0.0,
                requirement: "must be at least 1",
            });
        }
        Ok(Self {
            offsets: (0..=num_groups).map(|g| g * size).collect(),
            items: (0..num_groups * size).collect(),
            contiguous: true,
        })
    }

    /// Groups from a label per completion. Labels must be 0..G-1 with every label used; the
    /// order of completions is arbitrary (verl's reordered batches).
    pub fn from_labels(labels: &[usize]) -> Result<Self> {
        if labels.is_empty() {
            return Err(Error::Empty { arg: "group_ids" });
        }
        let num_groups = labels.iter().max().map_or(0, |&m| m + 1);
        if num_groups > labels.len() {
            return Err(Error::Groups {
                arg: "group_ids",
                msg: format!(
                    "labels must be 0..G-1 with every label used; max label {} for {} items",
                    num_groups - 1,
                    labels.len()
                ),
            });
        }
        // Counting sort: stable, so members keep their input order inside a group.
        let mut offsets = vec![0usize; num_groups + 1];
        for &g in labels {
            offsets[g + 1] += 1;
        }
        if let Some(g) = (0..num_groups).find(|&g| offsets[g + 1] == 0) {
            return Err(Error::Groups {
                arg: "group_ids",
                msg: format!("labels must be 0..G-1 with every label used; label {g} is unused"),
            });
        }
        for g in 0..num_groups {
            offsets[g + 1] += offsets[g];
        }
        let mut next = offsets.clone();
        let mut items = vec![0usize; labels.len()];
        for (i, &g) in labels.iter().enumerate() {
            items[next[g]] = i;
            next[g] += 1;
        }
        let contiguous = items.iter().enumerate().all(|(p, &i)| p == i);
        Ok(Self {
            offsets,
            items,
            contiguous,
        })
    }

    /// Number of groups (images).
    pub fn num_groups(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of completions.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no completions (never true for a constructed `Groups`).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Original positions of group `g`'s members, in input order.
    pub fn members(&self, g: usize) -> &[usize] {
        &self.items[self.offsets[g]..self.offsets[g + 1]]
    }

    /// Range of group `g` in the grouped (compressed) order.
    pub fn span(&self, g: usize) -> std::ops::Range<usize> {
        self.offsets[g]..self.offsets[g + 1]
    }

    /// Original position of each grouped slot.
    pub fn items(&self) -> &[usize] {
        &self.items
    }

    /// Whether the grouped order is the input order.
    pub fn is_contiguous(&self) -> bool {
        self.contiguous
    }

    /// Gathers `values` (input order) into grouped order.
    pub fn gather(&self, values: &[f64]) -> Vec<f64> {
        if self.contiguous {
            return values.to_vec();
        }
        self.items.iter().map(|&i| values[i]).collect()
    }

    /// Scatters `grouped` (grouped order) back to input order.
    pub fn scatter(&self, grouped: Vec<f64>) -> Vec<f64> {
        if self.contiguous {
            return grouped;
        }
        let mut out = vec![0.0; grouped.len()];
        for (&i, v) in self.items.iter().zip(grouped) {
            out[i] = v;
        }
        out
    }

    /// Checks that `len` matches the number of completions.
    pub(crate) fn check_len(&self, arg: &'static str, len: usize) -> Result<()> {
        if len != self.len() {
            return Err(Error::Length {
                arg,
                got: len,
                expected: self.len(),
                why: "one value per completion",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_input_order_within_groups() {
        let g = Groups::from_labels(&[1, 0, 1, 2, 0]).unwrap();
        assert_eq!(g.num_groups(), 3);
        assert_eq!(g.members(0), &[1, 4]);
        assert_eq!(g.members(1), &[0, 2]);
        assert_eq!(g.members(2), &[3]);
        assert!(!g.is_contiguous());
        let grouped = g.gather(&[10.0, 11.0, 12.0, 13.0, 14.0]);
        assert_eq!(grouped, vec![11.0, 14.0, 10.0, 12.0, 13.0]);
        assert_eq!(g.scatter(grouped), vec![10.0, 11.0, 12.0, 13.0, 14.0]);
    }

    #[test]
    fn unused_label_is_an_error() {
        let err = Groups::from_labels(&[0, 2, 2]).unwrap_err();
        assert_eq!(err.arg(), "group_ids");
    }

    #[test]
    fn sorted_labels_are_contiguous() {
        assert!(Groups::from_labels(&[0, 0, 1, 1]).unwrap().is_contiguous());
        assert_eq!(Groups::uniform(2, 3).unwrap().members(1), &[3, 4, 5]);
    }
}
