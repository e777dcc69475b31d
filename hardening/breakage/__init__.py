"""The extended breakage run (issue 13): breaks of the deployed lab that must fail their A/E checks."""
