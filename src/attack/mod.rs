//! PGD adversarial attacks in the ℓ∞ ball, batched.
