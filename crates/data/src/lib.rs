//! medxfer-data: from a dataset folder on disk to a batch tensor.
//!
//! Nothing lives here yet. Issue 4 fills this crate with readers for the real layouts of the
//! study's datasets (ISIC 2019, PAD-UFES-20, BreakHis, ICIAR 2018 BACH, the Kaggle brain MRI set,
//! Cheng's figshare set, NINS), the three tasks of `datasets/*.toml`, the faithful and
//! leakage-free splits, the reference transforms and a decoded-image cache.
