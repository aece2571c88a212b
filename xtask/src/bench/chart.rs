//! PNG charts of cost against N, drawn with plotters' bitmap backend. Text is rendered with
//! ab_glyph from DejaVu Sans (Debian's fonts-dejavu-core, installed by `cargo xtask setup`), so
//! no fontconfig lookup is involved.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use plotters::{coord::Shift, prelude::*, style::FontStyle};

use super::{
    datapath::Results as Datapath,
    e2e::{Proxy, Results as Proxies, med, quantile},
};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

type Series = (String, RGBColor, Vec<(f64, f64)>);

fn colour(p: Proxy) -> RGBColor {
    match p {
        Proxy::Lb => RGBColor(0, 114, 178),
        Proxy::Iptables => RGBColor(213, 94, 0),
        Proxy::Nftables => RGBColor(0, 158, 115),
        Proxy::Direct => RGBColor(110, 110, 110),
    }
}

/// Draws one panel: log-scale N on x, the y axis linear or logarithmic.
macro_rules! panel {
    ($area:expr, $title:expr, $ylabel:expr, $xmax:expr, $yrange:expr, $series:expr) => {{
        let mut chart = ChartBuilder::on($area)
            .caption($title, ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(80)
            .build_cartesian_2d((1f64..$xmax).log_scale(), $yrange)
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        chart
            .configure_mesh()
            .x_desc("services (N)")
            .y_desc($ylabel)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| short(*y))
            .light_line_style(WHITE)
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        for (name, colour, points) in $series {
            let colour = *colour;
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    colour.stroke_width(3),
                ))
                .map_err(|e| anyhow::anyhow!("chart: {e}"))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled())))
                .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 15))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
    }};
}

/// Axis labels without needless decimals: 20000, 450, 2.5, 0.25.
fn short(y: f64) -> String {
    if y == 0.0 {
        "0".into()
    } else if y.abs() >= 100.0 {
        format!("{y:.0}")
    } else if y.abs() >= 1.0 {
        format!("{y:.1}")
    } else {
        format!("{y:.2}")
    }
}

fn bounds(series: &[Series]) -> (f64, f64, f64) {
    let points = series
        .iter()
        .flat_map(|s| s.2.iter())
        .filter(|p| p.1.is_finite());
    let (mut xmax, mut ymin, mut ymax) = (10.0_f64, f64::MAX, 0.0_f64);
    for &(x, y) in points {
        xmax = xmax.max(x * 1.5);
        ymin = ymin.min(y);
        ymax = ymax.max(y);
    }
    if ymin == f64::MAX {
        ymin = 0.1;
    }
    (xmax, ymin.max(1e-3), ymax.max(1e-3))
}

fn linear_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    ylabel: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let (xmax, _, ymax) = bounds(series);
    panel!(area, title, ylabel, xmax, 0f64..ymax * 1.25, series);
    Ok(())
}

fn log_panel(
    area: &DrawingArea<BitMapBackend<'_>, Shift>,
    title: &str,
    ylabel: &str,
    series: &[Series],
) -> anyhow::Result<()> {
    let (xmax, ymin, ymax) = bounds(series);
    panel!(
        area,
        title,
        ylabel,
        xmax,
        (ymin / 2.0..ymax * 4.0).log_scale(),
        series
    );
    Ok(())
}

fn proxies_series(
    p: &Proxies,
    paths: &[Proxy],
    value: impl Fn(Proxy, &super::e2e::NResult) -> f64,
) -> Vec<Series> {
    paths
        .iter()
        .map(|&proxy| {
            let points = p
                .by_n
                .iter()
                .map(|r| (r.n as f64, value(proxy, r)))
                .filter(|(_, y)| y.is_finite() && *y > 0.0)
                .collect();
            (proxy.name().to_owned(), colour(proxy), points)
        })
        .collect()
}

/// Draws `proxies.png` and `datapath.png` into `dir`; returns their paths. Without the font,
/// warns and draws nothing.
pub fn draw(dir: &Path, d: &Datapath, p: &Proxies) -> anyhow::Result<Vec<PathBuf>> {
    let Ok(font) = std::fs::read(FONT) else {
        eprintln!("bench: {FONT} missing (Debian package fonts-dejavu-core): no charts");
        return Ok(Vec::new());
    };
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("{FONT} is not a usable font"))?;

    let proxies_png = dir.join("proxies.png");
    {
        let root = BitMapBackend::new(&proxies_png, (1600, 1100)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        let panels = root.split_evenly((2, 2));
        let rate = proxies_series(p, &Proxy::ALL, |proxy, r| {
            med(&r
                .rates
                .get(&proxy)
                .map(|v| v.iter().map(|x| x.per_second).collect::<Vec<_>>())
                .unwrap_or_default())
        });
        linear_panel(
            &panels[0],
            "New TCP connections per second",
            "connections/s",
            &rate,
        )?;
        let p99 = proxies_series(p, &Proxy::ALL, |proxy, r| {
            med(&r
                .rates
                .get(&proxy)
                .map(|v| v.iter().map(|x| x.p99_us).collect::<Vec<_>>())
                .unwrap_or_default())
        });
        linear_panel(&panels[1], "Connect latency, p99", "microseconds", &p99)?;
        let scratch = proxies_series(p, &Proxy::PROXIES, |proxy, r| {
            r.program.get(&proxy).map_or(f64::NAN, |x| x.wall_ms)
        });
        log_panel(
            &panels[2],
            "Programming N services from scratch",
            "milliseconds (log)",
            &scratch,
        )?;
        let change = proxies_series(p, &Proxy::PROXIES, |proxy, r| {
            quantile(
                r.change_ms
                    .get(&proxy)
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
                0.5,
            )
        });
        log_panel(
            &panels[3],
            "One service changed at N, p50",
            "milliseconds (log)",
            &change,
        )?;
        root.present()
            .with_context(|| format!("writing {}", proxies_png.display()))?;
    }

    let datapath_png = dir.join("datapath.png");
    {
        let root = BitMapBackend::new(&datapath_png, (1200, 700)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| anyhow::anyhow!("chart: {e}"))?;
        let cases = [
            ("IPv4 new flow", "v4_new", RGBColor(0, 114, 178)),
            (
                "IPv4 new flow, always the same service",
                "v4_new_one_service",
                RGBColor(204, 121, 167),
            ),
            ("IPv6 new flow", "v6_new", RGBColor(86, 180, 233)),
            ("IPv4 established", "v4_established", RGBColor(213, 94, 0)),
            ("IPv6 established", "v6_established", RGBColor(230, 159, 0)),
            ("empty TC program (floor)", "floor", RGBColor(110, 110, 110)),
        ];
        let series: Vec<Series> = cases
            .iter()
            .map(|(name, case, c)| {
                let points = d
                    .services
                    .iter()
                    .filter_map(|&n| d.get(n, case).map(|x| (f64::from(n), x.median_ns)))
                    .collect();
                ((*name).to_owned(), *c, points)
            })
            .collect();
        linear_panel(
            &root,
            "TC ingress program, median ns per packet (BPF_PROG_TEST_RUN)",
            "nanoseconds",
            &series,
        )?;
        root.present()
            .with_context(|| format!("writing {}", datapath_png.display()))?;
    }
    Ok(vec![proxies_png, datapath_png])
}
