# Figures, tables and the summary: one rule per entry of the registry
# (workflow/tokencarbon/figures/registry.py: name, inputs, params, caption, report category), so
# no figure is listed here by hand. Captions in workflow/report/.
from tokencarbon.figures.registry import ARTIFACTS, Study

FIGURE_STUDY = Study(PLAN)


def figure_outputs(artifact):
    """The artifact's outputs in the study's folder (the registry spells them results/<rel>:
    Plan.in_study), the one the report shows marked with its caption and category."""
    outputs = PLAN.in_study(dict(artifact.outputs))
    outputs[artifact.shown] = report(
        outputs[artifact.shown],
        caption=f"../report/{artifact.caption}",
        category=artifact.category,
    )
    return outputs


for _artifact in ARTIFACTS:

    rule:
        name:
            _artifact.rule
        input:
            **PLAN.in_study(_artifact.inputs(FIGURE_STUDY)),
            code=code_inputs(_artifact.script),
        output:
            **figure_outputs(_artifact),
        log:
            PLAN.log(f"{_artifact.rule}.log"),
        conda:
            "../envs/tokencarbon.yaml"
        params:
            **_artifact.params(FIGURE_STUDY),
            artifact=_artifact.name,
        script:
            f"../scripts/{_artifact.script}.py"
