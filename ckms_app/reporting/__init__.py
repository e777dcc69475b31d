"""Evidence a reviewer can check away from the CA: signed report bundles and attested procedures (issue 18)."""
