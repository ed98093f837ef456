//! The study driver: ask → train → score → store → tell, with budgets, failure isolation and resume.
