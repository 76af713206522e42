-- Every tag with the number of k-core items it describes, per tag source.

with

documents as (

    select * from {{ ref('item_tag_documents') }}

),

final as (

    select
        tag,
        tag_source,
        count(distinct item_id) as n_items
    from documents,
        unnest(documents.tags) as t(tag)
    group by tag, tag_source

)

select * from final
