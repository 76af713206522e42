{#- Raw text -> TIMESTAMP (UTC, no zone), or null when it cannot be read.
    Accepts Unix epoch seconds (optionally fractional, as MovieLens and most logs write
    them) and ISO-8601 text with or without an offset; the profile runs in UTC. ISO text is
    matched against its grammar before DuckDB casts it, because the cast alone also reads
    words ('epoch' is 1970-01-01) and offsets no clock shows (+99:99), which would move
    an event instead of rejecting it. -#}
{% macro parse_timestamp(raw) -%}
    {%- set iso_8601 = '[0-9]{4}-[0-9]{2}-[0-9]{2}'
        ~ '([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]+)?)?'
        ~ '(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)?)?' -%}
    case
        when regexp_full_match(trim({{ raw }}), '-?[0-9]{1,11}(\.[0-9]+)?')
            then make_timestamp(cast(cast(trim({{ raw }}) as double) * 1000000 as bigint))
        when regexp_full_match(trim({{ raw }}), '{{ iso_8601 }}')
            then try_cast(trim({{ raw }}) as timestamptz) at time zone 'UTC'
    end
{%- endmacro %}
