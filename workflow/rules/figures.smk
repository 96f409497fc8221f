# Figures: one rule per figure of the study, each a single target; captions in workflow/report/.


rule plot_fig1:
    input:
        arch=analytic_architecture_files,
        code=FIGURE_CODE,
    output:
        png=report(
            "results/figures/fig1_flops_vs_seqlen.png",
            caption="../report/fig1_flops_vs_seqlen.rst",
            category="Figures",
        ),
        pdf="results/figures/fig1_flops_vs_seqlen.pdf",
    log:
        "logs/plot_fig1.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        figure="fig1_flops_vs_seqlen",
        architectures=analytic_architectures(),
    script:
        "../scripts/render_figure.py"


rule plot_fig2a:
    input:
        arch=analytic_architecture_files,
        platforms="resources/platforms.csv",
        code=FIGURE_CODE,
    output:
        png=report(
            "results/figures/fig2a_memory_vs_seqlen.png",
            caption="../report/fig2a_memory_vs_seqlen.rst",
            category="Figures",
        ),
        pdf="results/figures/fig2a_memory_vs_seqlen.pdf",
    log:
        "logs/plot_fig2a.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        figure="fig2a_memory_vs_seqlen",
        architectures=analytic_architectures(),
        platforms=platform_limits(),
    script:
        "../scripts/render_figure.py"


rule plot_fig2b:
    input:
        platforms="resources/platforms.csv",
        code=FIGURE_CODE,
    output:
        png=report(
            "results/figures/fig2b_gpu_generations.png",
            caption="../report/fig2b_gpu_generations.rst",
            category="Figures",
        ),
        pdf="results/figures/fig2b_gpu_generations.pdf",
    log:
        "logs/plot_fig2b.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        figure="fig2b_gpu_generations",
    script:
        "../scripts/render_figure.py"


rule plot_fig4a:
    input:
        metrics="results/tables/metrics.parquet",
        code=FIGURE_CODE,
    output:
        png=report(
            "results/figures/fig4a_throughput_latency.png",
            caption="../report/fig4a_throughput_latency.rst",
            category="Figures",
        ),
        pdf="results/figures/fig4a_throughput_latency.pdf",
    log:
        "logs/plot_fig4a.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        figure="fig4a_throughput_latency",
        family="llama",
        models=models_of("llama"),
    script:
        "../scripts/render_figure.py"


rule plot_fig4b:
    input:
        metrics="results/tables/metrics.parquet",
        code=FIGURE_CODE,
    output:
        png=report(
            "results/figures/fig4b_throughput_latency.png",
            caption="../report/fig4b_throughput_latency.rst",
            category="Figures",
        ),
        pdf="results/figures/fig4b_throughput_latency.pdf",
    log:
        "logs/plot_fig4b.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        figure="fig4b_throughput_latency",
        family="gpt2",
        models=models_of("gpt2"),
    script:
        "../scripts/render_figure.py"


rule plot_fig5:
    input:
        metrics="results/tables/metrics.parquet",
        code=FIGURE_CODE,
    output:
        png=report(
            "results/figures/fig5_mfu_batch1.png",
            caption="../report/fig5_mfu_batch1.rst",
            category="Figures",
        ),
        pdf="results/figures/fig5_mfu_batch1.pdf",
    log:
        "logs/plot_fig5.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        figure="fig5_mfu_batch1",
    script:
        "../scripts/render_figure.py"


rule plot_fig6a:
    input:
        unpack(fig6a_inputs),
        code=FIGURE_CODE,
    output:
        png=report(
            "results/figures/fig6a_intensity_day.png",
            caption="../report/fig6a_intensity_day.rst",
            category="Figures",
        ),
        pdf="results/figures/fig6a_intensity_day.pdf",
    log:
        "logs/plot_fig6a.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        figure="fig6a_intensity_day",
        carbon=fig6a_params(),
    script:
        "../scripts/render_figure.py"


rule plot_fig6b:
    input:
        power="results/tables/power.parquet",
        code=FIGURE_CODE,
    output:
        png=report(
            "results/figures/fig6b_power_over_time.png",
            caption="../report/fig6b_power_over_time.rst",
            category="Figures",
        ),
        pdf="results/figures/fig6b_power_over_time.pdf",
    log:
        "logs/plot_fig6b.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        figure="fig6b_power_over_time",
        family="llama",
        models=models_of("llama"),
    script:
        "../scripts/render_figure.py"


rule plot_fig6c:
    input:
        power="results/tables/power.parquet",
        code=FIGURE_CODE,
    output:
        png=report(
            "results/figures/fig6c_power_over_time.png",
            caption="../report/fig6c_power_over_time.rst",
            category="Figures",
        ),
        pdf="results/figures/fig6c_power_over_time.pdf",
    log:
        "logs/plot_fig6c.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        figure="fig6c_power_over_time",
        family="gpt2",
        models=models_of("gpt2"),
    script:
        "../scripts/render_figure.py"


rule plot_fig7:
    input:
        metrics="results/tables/metrics.parquet",
        code=FIGURE_CODE,
    output:
        png=report(
            "results/figures/fig7_carbon_per_token.png",
            caption="../report/fig7_carbon_per_token.rst",
            category="Figures",
        ),
        pdf="results/figures/fig7_carbon_per_token.pdf",
    log:
        "logs/plot_fig7.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        figure="fig7_carbon_per_token",
    script:
        "../scripts/render_figure.py"


rule tabulate_table3:
    input:
        probes=probe_files("llama"),
        code=FIGURE_CODE,
    output:
        csv=report(
            "results/tables/table3_max_batch.csv",
            caption="../report/table3_max_batch.rst",
            category="Tables",
        ),
        md="results/tables/table3_max_batch.md",
    log:
        "logs/tabulate_table3.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        title="Table 3: maximum batch size before out-of-memory, Llama-2 family",
    script:
        "../scripts/tabulate_max_batch.py"


rule tabulate_table4:
    input:
        probes=probe_files("gpt2"),
        code=FIGURE_CODE,
    output:
        csv=report(
            "results/tables/table4_max_batch.csv",
            caption="../report/table4_max_batch.rst",
            category="Tables",
        ),
        md="results/tables/table4_max_batch.md",
    log:
        "logs/tabulate_table4.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        title="Table 4: maximum batch size before out-of-memory, GPT-2 family",
    script:
        "../scripts/tabulate_max_batch.py"


rule summarize_headlines:
    input:
        metrics="results/tables/metrics.parquet",
        probes=probe_files(None),
        code=FIGURE_CODE,
    output:
        "results/summary.md",
    log:
        "logs/summarize_headlines.log",
    conda:
        "../envs/tokencarbon.yaml"
    params:
        slos_s_per_token=config["summary"]["latency_slos_s_per_token"],
    script:
        "../scripts/summarize_headlines.py"
