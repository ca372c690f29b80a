"""One recipe per paper section; each is a short script over the shared components."""
