"""Evaluation the RobustBench/AutoAttack way: the eval-attack suite (`attacks`), the evaluator's guards
(`guards`), the adapter that lets robustbench import pyautoattack (`autoattack_compat`), and evaluating a
stored run into result rows (`evaluate`)."""
