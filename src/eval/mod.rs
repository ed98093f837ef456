//! Natural, adversarial and certified accuracy, including the IBP → CROWN-IBP → CROWN cascade.
