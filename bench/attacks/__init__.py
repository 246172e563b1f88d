"""Attacks that generate adversarial examples in training and evaluation: PGD/FGSM (`pgd`), LRAT's simplified
AutoAttack (`saa`), their losses (`losses`), and the training-attack registry (`training`). The evaluation
suite (AutoAttack and the PGD presets) is in bench/evaluation/."""
