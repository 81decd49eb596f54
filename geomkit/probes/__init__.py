"""Probes of the paper's two effects and its lemmas, on frozen encoders.

- `geomkit.probes.position`: Effect I / Fig. 2 - a 2-layer MLP probe that reads a token's absolute
  position from LN(e + p) (or any site), and its accuracy when one token's norm is scaled or a
  learned token stands in a prompt;
- `geomkit.probes.residual`: Effect II / Lemma 2 / Proposition 1 - per-block turning angles of a
  concept token's hidden state beside the bounds computed from empirical update norms;
- `geomkit.probes.attenuation`: Lemma 1 - ||Norm(m v + p) - Norm(m v)|| against m and its
  log-log slope;
- `geomkit.probes.drift`: Fig. 1b - cosine of a vector to related words of an encoder;
- `geomkit.probes.prompts`: prompt files and token batches shared by the probes.

Analysis functions take tensors; model forwards go through `geomkit.hooks` only. torch is
imported by the submodules, not here.
"""
