//! What the benchmark prints: samples and their percentiles, the table's rows with their
//! targets, the machine it ran on, and the chart of turn time per design.

use std::{path::Path, time::Duration};

/// Durations in ms, sorted, with percentiles.
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn from(d: &[Duration]) -> Self {
        Samples::of_ms(d.iter().map(|d| d.as_secs_f64() * 1e3).collect())
    }
    pub fn of_ms(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Samples(v)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn pct(&self, p: f64) -> f64 {
        self.0[((self.0.len() - 1) as f64 * p).round() as usize]
    }
    pub fn p50(&self) -> f64 {
        self.pct(0.5)
    }
    pub fn p99(&self) -> f64 {
        self.pct(0.99)
    }
}

/// One line of the table.
pub struct Row {
    what: String,
    measured: String,
    against: String,
    ratio: String,
    target: String,
}

pub fn row(
    what: impl Into<String>,
    measured: String,
    against: String,
    ratio: String,
    target: String,
) -> Row {
    Row {
        what: what.into(),
        measured,
        against,
        ratio,
        target,
    }
}

pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// Prints the table (Markdown) under a heading naming the agent and the machine.
pub fn print_table(agent: &str, summary: &str, table: &[Row]) {
    println!("\ntether benchmark · {agent} · {}", machine());
    println!("{summary}\n");
    println!("| measure | measured | against | ratio | target |");
    println!("| --- | --- | --- | --- | --- |");
    for r in table {
        println!(
            "| {} | {} | {} | {} | {} |",
            r.what, r.measured, r.against, r.ratio, r.target
        );
    }
}

fn machine() -> String {
    let mut sys = sysinfo::System::new();
    sys.refresh_cpu_all();
    sys.refresh_memory();
    let cpu = sys
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .unwrap_or_default();
    format!(
        "{} {} · {} · {} logical cores · {:.0} GiB",
        sysinfo::System::name().unwrap_or_default(),
        sysinfo::System::os_version().unwrap_or_default(),
        cpu,
        sys.cpus().len(),
        sys.total_memory() as f64 / (1u64 << 30) as f64
    )
}

/// Bars of turn time (p50, with p99 above it) per design.
pub fn draw(path: &Path, agent: &str, bars: &[(&str, &Samples)]) {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (760, 420)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    // A log scale: the designs differ by orders of magnitude.
    let top = bars.iter().map(|(_, s)| s.p99()).fold(1.0, f64::max) * 3.0;
    let bottom = bars.iter().map(|(_, s)| s.p50()).fold(top, f64::min) / 3.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Turn time per design ({agent})"),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d((0..bars.len()).into_segmented(), (bottom..top).log_scale())
        .unwrap();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("ms per turn, log scale (bar: p50, line: p99)")
        .y_label_formatter(&|v| format!("{v}"))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => bars.get(*i).map_or("", |b| b.0).to_string(),
            _ => String::new(),
        })
        .draw()
        .unwrap();
    let colours = [
        RGBColor(200, 80, 60),
        RGBColor(90, 140, 200),
        RGBColor(60, 160, 90),
    ];
    for (i, (_, s)) in bars.iter().enumerate() {
        let style = colours[i % colours.len()].filled();
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(i), bottom),
                    (SegmentValue::Exact(i + 1), s.p50()),
                ],
                style,
            )))
            .unwrap();
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![
                    (SegmentValue::CenterOf(i), s.p50()),
                    (SegmentValue::CenterOf(i), s.p99()),
                ],
                BLACK.stroke_width(2),
            )))
            .unwrap();
        chart
            .draw_series(std::iter::once(Text::new(
                format!("{:.2} ms", s.p50()),
                (SegmentValue::CenterOf(i), s.p99() * 1.4),
                ("sans-serif", 14),
            )))
            .unwrap();
    }
    root.present().unwrap();
}
