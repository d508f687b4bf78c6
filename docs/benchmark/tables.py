"""Cells the benchmark scripts' Markdown tables share."""


def margin_cell(row: dict) -> str:
    """The default's image ROC-AUC minus the best VAE-free method's, ×100, with its interval."""
    low, high = row["margin_over_vae_free.ci_low"], row["margin_over_vae_free.ci_high"]
    return (
        f"{100 * row['margin_over_vae_free.image_roc_auc']:+.1f} "
        f"[{100 * low:+.1f}, {100 * high:+.1f}] vs {row['vae_free_best']}"
    )
